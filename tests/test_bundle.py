"""The Muse CLI's own fetch: POST /fetch (inline bundle), /negotiate, /presign."""
from __future__ import annotations

import hashlib

import pytest
import webtest

from app import create_app
from mpack.hub.bootstrap import build_hub
from mpack.hub.settings import Settings
from tests.database import database_url
from tests.factories import History, make_repo, make_user, push_history, unpack, wire

PATH = "/gabriel/song"


@pytest.fixture
def pushed(app, owner, repo) -> History:
    history = History().linear(5)
    push_history(app, owner[1], PATH, history)
    return history


def test_clone_fetch_returns_everything_for_all_heads(app, pushed):
    bundle = unpack(wire(app, "POST", f"{PATH}/fetch", {"want": [pushed.tip], "have": []}, status=200))
    assert [c["commit_id"] for c in bundle["commits"]] == [c["commit_id"] for c in reversed(pushed.commits)]
    assert {s["snapshot_id"] for s in bundle["snapshots"]} == set(pushed.snapshots)
    assert {o["object_id"]: o["content"] for o in bundle["objects"]} == pushed.blobs
    assert bundle["branch_heads"] == {"main": pushed.tip}


def test_objects_travel_as_msgpack_bin_whose_ids_match_their_content(app, pushed):
    bundle = unpack(wire(app, "POST", f"{PATH}/fetch", {"want": [pushed.tip], "have": []}, status=200))
    for obj in bundle["objects"]:
        assert isinstance(obj["content"], bytes)
        assert hashlib.sha256(obj["content"]).hexdigest() == obj["object_id"][-64:]


def test_fetch_with_haves_returns_only_the_delta(app, pushed):
    have = [c["commit_id"] for c in pushed.commits[:3]]
    bundle = unpack(wire(app, "POST", f"{PATH}/fetch", {"want": [pushed.tip], "have": have}, status=200))
    assert [c["commit_id"] for c in bundle["commits"]] == [pushed.commits[4]["commit_id"], pushed.commits[3]["commit_id"]]
    assert sorted(o["content"] for o in bundle["objects"]) == [b"content 3\n", b"content 4\n"]


def test_unknown_wants_are_skipped_and_unknown_haves_ignored(app, pushed):
    body = {"want": [pushed.tip, "ab" * 32], "have": ["cd" * 32] * 5000}
    bundle = unpack(wire(app, "POST", f"{PATH}/fetch", body, status=200))
    assert len(bundle["commits"]) == 5


def test_up_to_date_fetch_is_empty(app, pushed):
    bundle = unpack(wire(app, "POST", f"{PATH}/fetch", {"want": [pushed.tip], "have": [pushed.tip]}, status=200))
    assert (bundle["commits"], bundle["objects"]) == ([], [])


def test_empty_blobs_are_never_transferred(app, owner, repo):
    history = History()
    history.commit({"empty.txt": b"", "full.txt": b"x"})
    push_history(app, owner[1], PATH, history)
    bundle = unpack(wire(app, "POST", f"{PATH}/fetch", {"want": [history.tip]}, status=200))
    assert [o["content"] for o in bundle["objects"]] == [b"x"]


def test_json_clients_get_base64_content(app, pushed):
    bundle = app.post_json(f"{PATH}/fetch", {"want": [pushed.tip]}).json
    assert len(bundle["objects"]) == 5 and all(isinstance(o["content"], str) for o in bundle["objects"])


def test_a_bundle_over_the_inline_limit_names_the_mpack_route(tmp_path, clock):
    hub = build_hub(Settings.for_home(tmp_path / "small",
                                      database_url=database_url(tmp_path / "small"), public_url="http://hub.test", job_threads=0,
                                      inline_fetch_max_bytes=1000), clock=clock)
    app = webtest.TestApp(create_app(hub))
    user, token = make_user(hub, "gabriel")
    make_repo(hub, user, "song")
    history = History()
    history.commit({"big.bin": b"x" * 5000})
    push_history(app, token, PATH, history)
    reply = wire(app, "POST", f"{PATH}/fetch", {"want": [history.tip]}, status=422)
    assert reply.json["error"] == "bundle_too_large"
    assert "/gabriel/song/fetch/mpack" in reply.json["detail"]


@pytest.mark.parametrize("body", [{"want": "x"}, {"want": [], "have": 3}, {"want": [1]}])
def test_fetch_refuses_wrong_types(app, pushed, body):
    assert wire(app, "POST", f"{PATH}/fetch", body, status=400).json["error"] == "invalid_field"


def test_negotiate_acks_known_haves_and_names_the_newest(app, pushed):
    have = [pushed.commits[1]["commit_id"], pushed.commits[3]["commit_id"], "ef" * 32]
    answer = unpack(wire(app, "POST", f"{PATH}/negotiate", {"want": [pushed.tip], "have": have}, status=200))
    assert answer == {"ack": have[:2], "common_base": pushed.commits[3]["commit_id"], "ready": True}


def test_negotiate_without_common_history_is_not_ready(app, pushed):
    answer = unpack(wire(app, "POST", f"{PATH}/negotiate", {"want": [pushed.tip], "have": ["ef" * 32]}, status=200))
    assert answer == {"ack": [], "common_base": None, "ready": False}


def test_presign_answers_everything_inline(app, owner, pushed):
    ids = sorted(pushed.blobs)[:2]
    answer = unpack(wire(app, "POST", f"{PATH}/presign", {"object_ids": ids, "direction": "put"}, token=owner[1], status=200))
    assert answer == {"presigned": {}, "inline": ids}


def test_presign_refuses_an_unknown_direction(app, owner, pushed):
    wire(app, "POST", f"{PATH}/presign", {"object_ids": [], "direction": "sideways"}, token=owner[1], status=400)


def test_private_repo_fetch_and_negotiate_are_404_to_strangers(app, private_repo, stranger):
    for route in ("fetch", "negotiate"):
        wire(app, "POST", f"/gabriel/secret/{route}", {"want": [], "have": []}, status=404)
        wire(app, "POST", f"/gabriel/secret/{route}", {"want": [], "have": []}, token=stranger[1], status=404)
