"""A NUL in a name or id is bad input on every backend: 4xx (or skipped), never a 5xx (PostgreSQL refuses NUL
even as a query parameter, so such input must never reach a query)."""
from __future__ import annotations

import pytest

from tests.factories import History, push_history, wire

PATH = "/gabriel/song"
CASES = {
    "fetch/mpack want": ("POST", f"{PATH}/fetch/mpack", {"want": ["ma\x00in"]}, 404),
    "fetch/mpack non-ascii want": ("POST", f"{PATH}/fetch/mpack", {"want": ["ma\u00e9\x00in"]}, 404),
    "fetch want": ("POST", f"{PATH}/fetch", {"want": ["ma\x00in"]}, 200),  # /fetch skips unknown wants
    "repo in the path": ("GET", "/gabriel/so%00ng/refs", None, 404),
    "owner in the api path": ("GET", "/api/repos/gab%00riel/song", None, 404),
    "push branch": ("POST", f"{PATH}/push", "bundle", 422),
    "new repo name": ("POST", "/api/repos", {"name": "a\x00b"}, 400),
    "filter-objects id": ("POST", f"{PATH}/filter-objects", {"object_ids": ["\x00" * 64]}, 400),
    "admin gc repo": ("POST", "/admin/gc", {"repo": "gabriel/so\x00ng"}, 404),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_nul_in_input_is_never_a_5xx(app, hub, owner, repo, case):
    history = History().linear(2)
    push_history(app, owner[1], PATH, history)
    method, path, body, expected = CASES[case]
    if body == "bundle":
        body = {"bundle": history.bundle(with_objects=False), "branch": "ma\x00in", "force": False}
    token = hub.settings.admin_token if path.startswith("/admin") else owner[1]
    reply = wire(app, method, path, body, token=token)
    assert reply.status_int == expected, reply.body
    assert reply.status_int == 200 or reply.json["error"]
