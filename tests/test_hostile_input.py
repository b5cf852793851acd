"""Hostile input through the Falcon app (issue 9, items 1, 2 and 6).

Memory: what decoding a body may cost, measured with tracemalloc on the
decoder the resources use. Cache: made-up haves and redundant wants must not
turn a cached clone into a build. 5xx: inputs that once raised inside the hub.
"""
from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from pathlib import Path

import msgpack
import pytest

from mpack.format import ids
from mpack.http import media
from mpack.http.media import decode, large_limits, small_limits
from mpack.hub import fetch
from mpack.hub.errors import BadRequest, BodyTooLarge, MalformedBody
from mpack.hub.models import Commit, FetchMPackCache, Snapshot
from mpack.hub.settings import Settings
from tests.factories import MSGPACK, History, error_of, push_history, refuse_nul_like_postgresql, unpack, wire

SONG = "/gabriel/song"
JSON = "application/json"
MiB = 1024 * 1024


# -- item 1: what a body may cost ------------------------------------------------------

def _array(item: bytes, count: int) -> bytes:
    return b"\xdd" + count.to_bytes(4, "big") + item * count


def _nested(item: bytes, size: int, width: int = 100_000) -> bytes:
    """``{"want": [[item × width], …]}``: each array within the length limit, the whole about ``size``."""
    inner = _array(item, width)
    return b"\x81\xa4want" + _array(inner, max(size // len(inner), 1))


def _peak_while(fn) -> tuple[int, object]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 — the outcome is part of what is measured
        result = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, result


SIZE = 3 * MiB
HOSTILE = {
    # msgpack: one byte (or three) on the wire for an object of 28-64 bytes
    "msgpack-empty-maps": (MSGPACK, _nested(b"\x80", SIZE)),
    "msgpack-empty-lists": (MSGPACK, _nested(b"\x90", SIZE)),
    "msgpack-nils": (MSGPACK, _nested(b"\xc0", SIZE)),
    "msgpack-short-strings": (MSGPACK, _nested(b"\xa2ab", SIZE)),
    "msgpack-ints": (MSGPACK, _nested(b"\xcd\x01\x01", SIZE)),
    "msgpack-one-long-array": (MSGPACK, b"\x81\xa4want" + _array(b"\x80", SIZE)),
    # JSON: the same shapes in text
    "json-empty-maps": (JSON, b'{"want":[' + b"{}," * (SIZE // 3) + b"{}]}"),
    "json-empty-lists": (JSON, b'{"want":[' + b"[]," * (SIZE // 3) + b"[]]}"),
    "json-short-strings": (JSON, b'{"want":[' + b'"ab",' * (SIZE // 5) + b'"a"]}'),
    "json-ints": (JSON, b'{"want":[' + b"1000," * (SIZE // 5) + b"1]}"),
    "json-small-maps": (JSON, b'{"want":[' + b'{"a":1},' * (SIZE // 8) + b"1]}"),
    "json-unique-keys": (JSON, b"{" + b"".join(b'"%07d":0,' % i for i in range(SIZE // 12)) + b'"x":1}'),
}


@pytest.fixture(scope="module")
def limits(tmp_path_factory):
    settings = Settings.for_home(tmp_path_factory.mktemp("limits"))
    return small_limits(settings), large_limits(settings)


@pytest.mark.parametrize("route", ["small", "large"])
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_body_is_refused_before_it_costs_4x_its_size(limits, kind, route):
    """Item 1: 16 MiB of ``{}`` once took 70× its size; decoding now stops within 4× (+1 MiB)."""
    content_type, raw = HOSTILE[kind]
    peak, result = _peak_while(lambda: decode(raw, content_type, limits[route == "large"]))
    assert isinstance(result, (BodyTooLarge, MalformedBody)), result
    assert peak < 4 * len(raw) + 2 * MiB, f"{peak / len(raw):.1f}x"


def _haves(count: int, prefix: str = "") -> list[str]:
    return [prefix + hashlib.sha256(b"%d" % n).hexdigest() for n in range(count)]


@pytest.mark.parametrize("content_type", [MSGPACK, JSON])
def test_a_fetch_naming_100000_haves_still_decodes(limits, content_type):
    """What the Muse CLI sends on fetch (every local commit) stays inside the read-route limits."""
    body = {"want": ["main"], "have": _haves(100_000, "sha256:")}
    raw = msgpack.packb(body) if content_type == MSGPACK else json.dumps(body).encode()
    assert len(raw) <= limits[0].max_bytes
    assert decode(raw, content_type, limits[0]) == body


def test_haves_past_the_limit_are_ignored_not_refused(monkeypatch):
    monkeypatch.setattr(fetch, "MAX_HAVES", 3)
    want, have = fetch.parse_want_have({"want": ["main"], "have": _haves(5)})
    assert want == ["main"] and have == _haves(3)
    with pytest.raises(BadRequest):
        fetch.parse_want_have({"want": _haves(fetch.MAX_WANTS + 1), "have": []})


@pytest.mark.parametrize("content_type", [MSGPACK, JSON])
def test_a_push_of_many_commits_and_wide_manifests_still_decodes(limits, content_type):
    history = History()
    for n in range(300):
        history.commit({f"dir{n % 20}/file{n}.txt": b"%d" % n})
    body = {"bundle": history.bundle(with_objects=False), "branch": "main", "force": False}
    raw = msgpack.packb(body) if content_type == MSGPACK else json.dumps(body).encode()
    peak, result = _peak_while(lambda: decode(raw, content_type, limits[1]))
    assert result == body
    assert peak < 4 * len(raw)


def test_read_routes_have_a_small_limit_push_routes_the_large_one(app, owner, repo):
    big = 9 * MiB
    body = {"want": ["main"], "have": [], "pad": b"x" * big}
    assert error_of(wire(app, "POST", f"{SONG}/fetch/mpack", body), 413)["error"] == "body_too_large"
    blob = os.urandom(big)
    objects = [{"object_id": ids.object_digest(blob), "content": blob}]
    stored = wire(app, "POST", f"{SONG}/push/objects", {"objects": objects}, token=owner[1], status=200)
    assert unpack(stored) == {"stored": 1, "skipped": 0}


def test_the_amplification_body_is_a_4xx_through_the_app(app, repo):
    raw = _nested(b"\x80", 2 * MiB)
    response = app.post(f"{SONG}/fetch/mpack", raw, headers={"Content-Type": MSGPACK}, expect_errors=True)
    assert error_of(response, 413)["error"] == "body_too_complex"


@pytest.mark.parametrize("token", [b"{", b"[", b'"', b",", b":", b"1"])
def test_a_json_body_short_enough_to_skip_the_count_is_within_budget_whatever_it_holds(token):
    # media skips json_cost below JSON_ALWAYS_AFFORDABLE bytes (a clone's hit): that must never let through
    # what the count would refuse.
    raw = token * media.JSON_ALWAYS_AFFORDABLE
    assert media.json_cost(raw) <= media.JSON_ESTIMATE_FACTOR * len(raw) + media.MEMORY_SLACK


# -- item 2: made-up haves and redundant wants hit the tip's row ---------------------------

@pytest.fixture
def pushed(app, owner, repo) -> History:
    history = History().linear(4)
    push_history(app, owner[1], SONG, history)
    return history


def _fetch(app, want: list[str], have: list[str]) -> dict:
    return unpack(wire(app, "POST", f"{SONG}/fetch/mpack", {"want": want, "have": have}, status=200))


def _locks(hub) -> list[Path]:
    return sorted((hub.settings.home / "locks").glob("*"))


def _rows() -> list[tuple[str, str]]:
    return sorted((r.tip_commit_id, r.base) for r in FetchMPackCache.select())


def test_made_up_haves_are_a_plain_clone_served_from_the_tips_row(app, hub, pushed):
    clone = _fetch(app, [pushed.tip], [])
    rows, locks = _rows(), _locks(hub)
    for attempt in range(3):
        bogus = _haves(1000 + attempt)[attempt:]
        answer = _fetch(app, [pushed.tip], bogus)
        assert answer["cached"] is True
        assert answer["mpack_id"] == clone["mpack_id"]
    assert _rows() == rows  # no row per request …
    assert _locks(hub) == locks  # … and no lock file either


def test_a_delta_is_keyed_by_the_haves_that_bound_it(app, hub, pushed):
    previous = pushed.commits[2]["commit_id"]
    first = _fetch(app, [pushed.tip], [previous, *_haves(500)])
    assert (first["cached"], first["commit_count"]) == (False, 1)
    # The client also names older commits (and other made-up ones): the same delta, the same row.
    older = [c["commit_id"] for c in pushed.commits[:2]]
    again = _fetch(app, [pushed.tip], [*older, previous, *_haves(700)[600:]])
    assert again["cached"] is True and again["mpack_id"] == first["mpack_id"]
    bases = {base for _, base in _rows() if base}
    assert bases == {hashlib.sha256(ids.hex_of(previous).encode()).hexdigest()}  # a fixed-size key


def test_a_want_that_is_an_ancestor_of_another_adds_nothing(app, pushed):
    clone = _fetch(app, [pushed.tip], [])
    both = _fetch(app, [pushed.commits[1]["commit_id"], pushed.tip], [])
    assert both["cached"] is True and both["mpack_id"] == clone["mpack_id"]


def test_a_clone_by_commit_id_still_never_walks(app, hub, pushed, monkeypatch):
    _fetch(app, [pushed.tip], [])

    def no_walk(*args, **kwargs):
        raise AssertionError("a cache hit walked the history")

    monkeypatch.setattr(fetch, "_walk_commit_delta", no_walk)
    assert _fetch(app, [pushed.tip], [])["cached"] is True
    assert _fetch(app, [pushed.tip], _haves(3))["cached"] is True  # made-up haves: one lookup, no walk


# -- item 6: no 5xx from input ----------------------------------------------------------

@pytest.fixture
def mpack_url(app, pushed) -> str:
    return _fetch(app, [pushed.tip], [])["mpack_url"].removeprefix("http://hub.test")


@pytest.mark.parametrize("header, status", [
    ("bytes=" + "9" * 5000 + "-", 416),
    ("bytes=0-" + "9" * 5000, 206),
    ("bytes=-" + "9" * 5000, 206),
    ("bytes=" + "1" * 19 + "-" + "2" * 19, 416),
])
def test_a_range_of_thousands_of_digits_is_an_answer_not_a_500(app, mpack_url, header, status):
    response = app.get(mpack_url, headers={"Range": header}, expect_errors=True)
    assert response.status_int == status


def _json_post(app, path: str, text: str, token: str | None = None):
    headers = {"Content-Type": JSON}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return app.post(path, text.encode(), headers=headers, expect_errors=True)


@pytest.mark.parametrize("route, template", [
    ("fetch/mpack", '{"want": ["%s"]}'),
    ("fetch", '{"want": ["%s"], "have": []}'),
    ("negotiate", '{"want": [], "have": ["%s"]}'),
    ("push", '{"branch": "%s", "bundle": {"commits": [], "snapshots": [], "objects": []}}'),
    ("push", '{"branch": "main", "bundle": {"commits": [{"message": "%s"}]}}'),
    ("push", '{"branch": "main", "bundle": {"snapshots": [{"manifest": {"%s": "x"}}]}}'),
])
def test_a_lone_surrogate_in_json_is_a_400(app, owner, pushed, route, template):
    response = _json_post(app, f"{SONG}/{route}", template % "\\ud800", owner[1])
    assert error_of(response, 400)["error"] == "malformed_body"


@pytest.mark.parametrize("text", ["\\ud83c\\udfb5", "\\\\ud800"])
def test_a_surrogate_pair_in_json_is_text(app, owner, repo, text):
    """An emoji escaped as a pair (what json.dumps writes), or a backslash before "ud800", is text."""
    response = _json_post(app, "/api/repos", '{"name": "tune", "pad": "' + text + '"}', owner[1])
    assert response.status_int == 201


def _push_with(app, token: str, history: History, field: str, value, where: str = "commit"):
    bundle = history.bundle()
    record = bundle["commits"][0] if where == "commit" else bundle["snapshots"][0]
    record[field] = value
    return wire(app, "POST", f"{SONG}/push", {"bundle": bundle, "branch": "main"}, token=token)


@pytest.mark.parametrize("where, field, value", [
    ("commit", "agent_id", b"\x00bytes"),
    ("commit", "metadata", {"key": msgpack.ExtType(5, b"ext")}),
    ("commit", "signature", msgpack.Timestamp(1, 0)),
    ("commit", "test_runs", [1.5, float("nan")]),
    ("snapshot", "created_at", b"2026"),
    ("snapshot", "extra", [[msgpack.ExtType(1, b"")]]),
])
def test_a_record_value_json_cannot_hold_is_422_naming_the_field(app, owner, repo, where, field, value):
    history = History().linear(1)
    body = error_of(_push_with(app, owner[1], history, field, value, where), 422)
    assert body["error"] == "invalid_record"
    assert field in body["detail"]
    assert Commit.select().count() == 0 and Snapshot.select().count() == 0


@pytest.mark.parametrize("method, path, body, status", [
    ("POST", f"{SONG}/fetch/mpack", {"want": ["ma\x00in"]}, 404),
    ("POST", f"{SONG}/fetch", {"want": ["ma\x00in"], "have": []}, 200),  # unknown wants are skipped
    ("GET", "/gab\x00riel/song/refs", None, 404),
    ("GET", "/api/repos/gabriel/so\x00ng", None, 404),
    ("POST", "/admin/gc", {"repo": "gabriel/so\x00ng"}, 404),
])
def test_a_nul_in_a_name_never_reaches_a_query(app, hub, pushed, monkeypatch, method, path, body, status):
    """PostgreSQL refuses NUL in a query (a 500 there): names no repo or branch can have are not looked up."""
    refuse_nul_like_postgresql(hub.db, monkeypatch)
    headers = {"Authorization": f"Bearer {hub.settings.admin_token}"} if path.startswith("/admin") else {}
    if body is None:
        response = app.get(path, headers=headers, expect_errors=True)
    else:
        response = app.post_json(path, body, headers=headers, expect_errors=True)
    assert response.status_int == status, response.body[:300]
