"""End to end on a real gunicorn (gunicorn.conf.py, 2 workers, 127.0.0.1, random port)."""
from __future__ import annotations

import hashlib

import pytest

from bench.live_hub import live_hub, push_like_cli
from bench.live_hub import poll as wait_for
from tests.database import database_url
from tests.factories import History

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("live") / "hub"
    with live_hub(home, workers=2, env={"MPACKHUB_DATABASE_URL": database_url(home)}) as server:
        yield server




def test_push_of_a_50_commit_history_reads_back_from_refs(hub_server):
    token = hub_server.create_user("pusher")
    hub_server.create_repo(token, "fifty")
    history = History()
    for n in range(50):
        history.commit({f"dir{n % 7}/file{n}.txt": f"line {n}\n".encode() * (n + 1), "README": f"v{n}".encode()})
    answer = push_like_cli(hub_server, token, "/pusher/fifty", history, history.commits)
    assert answer["ok"] is True
    refs = hub_server.call("GET", "/pusher/fifty/refs").data()
    assert refs["branch_heads"] == {"main": history.tip}
    assert refs["default_branch"] == "main"


def test_a_push_is_prebuilt_and_fetches_are_cache_hits(hub_server):
    token = hub_server.create_user("builder")
    hub_server.create_repo(token, "beats")
    history = History().linear(8)
    push_like_cli(hub_server, token, "/builder/beats", history, history.commits)
    dev = history.commit({"dev.txt": b"dev"}, parents=[history.commits[4]["commit_id"]])
    push_like_cli(hub_server, token, "/builder/beats", history, [dev], branch="dev")
    previous = history.commits[7]["commit_id"]
    more = history.commit({"more.txt": b"more"}, parents=[previous])
    main_tip = more["commit_id"]
    push_like_cli(hub_server, token, "/builder/beats", history, [more])

    def done() -> bool:
        counts = hub_server.call("GET", "/admin/jobs", token=hub_server.admin_token, as_json=True).data()["counts"]
        return counts.get("pending", 0) == 0 and counts.get("running", 0) == 0 and counts.get("done", 0) >= 1

    wait_for(done, what="the prebuild jobs")
    for tip in (main_tip, dev["commit_id"]):
        answer = hub_server.call("POST", "/builder/beats/fetch/mpack", {"want": [tip], "have": []}).data()
        assert answer["cached"] is True, tip
    update = hub_server.call("POST", "/builder/beats/fetch/mpack", {"want": [main_tip], "have": [previous]}).data()
    assert update["cached"] is True
    assert update["commit_count"] == 1


def test_signed_download_streams_and_ranges_through_gunicorn(hub_server):
    token = hub_server.create_user("fetcher")
    hub_server.create_repo(token, "tracks")
    history = History()
    history.commit({"big.bin": bytes(range(256)) * 8192})  # 2 MiB, compressible
    push_like_cli(hub_server, token, "/fetcher/tracks", history, history.commits)
    answer = hub_server.call("POST", "/fetcher/tracks/fetch/mpack", {"want": ["main"]}).data()
    full = hub_server.call("GET", answer["mpack_url"])
    assert full.status == 200
    assert hashlib.sha256(full.body).hexdigest() == answer["mpack_id"][-64:]
    assert int(full.headers["content-length"]) == answer["size_bytes"]
    part = hub_server.call("GET", answer["mpack_url"], headers={"Range": "bytes=100-"})
    assert part.status == 206 and part.body == full.body[100:]
    assert hub_server.call("GET", answer["mpack_url"].replace("sig=", "sig=A")).status == 403


def test_each_worker_makes_the_stores_shard_directories_before_serving(hub_server):
    store = hub_server.home / "store"
    for namespace in ("blobs", "mpacks"):
        assert sorted(p.name for p in (store / namespace).iterdir()) == [f"{n:02x}" for n in range(256)]
    assert (store / "tmp").is_dir()
