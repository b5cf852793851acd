"""The cached fetch path: wire_fetch_mpack and POST /{owner}/{repo}/fetch/mpack (FMC_13, FMC_14)."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import threading

import pytest

from mpack.format import ids
from mpack.format.layout import BlobRecord, CommitRecord, SnapshotRecord
from mpack.format.reader import iter_mpack
from mpack.hub import build, cache, fetch, history
from mpack.hub.build_gate import BuildGate
from mpack.hub.models import FetchMPackCache
from storage.base import BLOBS
from tests.factories import History, fake_mpack_id, push_history, unpack, wire

PATH = "/gabriel/song"


@pytest.fixture
def pushed(app, owner, repo) -> History:
    """A 6-commit history on main, pushed through the wire protocol."""
    history = History().linear(6)
    push_history(app, owner[1], PATH, history)
    return history


def download(app, url: str) -> bytes:
    return app.get(url.replace("http://hub.test", "")).body


def read_pack(data: bytes, held: History | None = None) -> dict:
    """Every record of a pack, verified by the reader (``held``: the receiver's snapshots)."""
    found = {"blobs": {}, "snapshots": [], "commits": []}
    snapshots = held.snapshots if held is not None else {}

    def base(snapshot_id: str) -> dict | None:
        return snapshots[snapshot_id]["manifest"] if snapshot_id in snapshots else None

    for record in iter_mpack(io.BytesIO(data), snapshot_base=base):
        if isinstance(record, BlobRecord):
            found["blobs"][record.object_id] = b"".join(record.chunks)
        elif isinstance(record, SnapshotRecord):
            found["snapshots"].append(record.data)
        elif isinstance(record, CommitRecord):
            found["commits"].append(record.data)
    return found


class Spy:
    """Wraps a function and counts its calls (the seed's mock, without faking the result)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


# -- FMC_13 / FMC_14 -----------------------------------------------------------------------

def test_fmc_13_cache_hit_returns_presigned_url_without_walking(hub, repo, monkeypatch):
    tip = History().linear(1).tip  # the hit path must not even need the commit's history
    cached_mpack = fake_mpack_id("fmc13-tip")
    hub.store.put_bytes("mpacks", cached_mpack, b"mpack-fmc13-tip")  # a hit is served only while its file exists
    now = hub.now()
    FetchMPackCache.create(cache_id=cache.cache_id(repo.repo_id, tip), repo=repo, tip_commit_id=tip,
                           mpack_id=cached_mpack, created_at=now, expires_at=now + 7 * 86400, last_used_at=now)
    walk = Spy(history.walk_commit_delta)
    monkeypatch.setattr(fetch, "_walk_commit_delta", walk)

    result = fetch.wire_fetch_mpack(hub, repo, want=[tip], have=[])

    assert walk.calls == []
    assert result["mpack_id"] == cached_mpack
    assert result["mpack_url"] == hub.store.presign_mpack_get(cached_mpack, hub.settings.url_ttl)
    assert result["cached"] is True


def test_fmc_14_cache_miss_builds_stores_and_writes_cache_row(hub, repo, pushed):
    result = fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])

    row = FetchMPackCache.get(FetchMPackCache.repo == repo, FetchMPackCache.tip_commit_id == pushed.tip)
    assert row.mpack_id == result["mpack_id"]
    assert row.expires_at > hub.now()
    assert hub.store.exists("mpacks", result["mpack_id"])
    assert result["mpack_url"] == hub.store.presign_mpack_get(result["mpack_id"], hub.settings.url_ttl)
    assert result["cached"] is False
    assert (result["commit_count"], result["blob_count"]) == (6, 6)


def test_second_fetch_of_a_tip_is_a_hit(hub, repo, pushed):
    first = fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])
    second = fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])
    assert second["cached"] is True
    assert second["mpack_id"] == first["mpack_id"]


def test_expired_row_is_rebuilt(hub, repo, pushed, clock):
    fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])
    clock.advance(hub.settings.cache_ttl + 1)
    again = fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])
    assert again["cached"] is False
    assert FetchMPackCache.get(FetchMPackCache.repo == repo).expires_at > hub.now()


# -- the pack's content -------------------------------------------------------------------

def test_pack_round_trips_everything_pushed(app, hub, repo, pushed):
    result = fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])
    data = download(app, result["mpack_url"])
    assert hashlib.sha256(data).hexdigest() == result["mpack_id"][-64:]
    found = read_pack(data)
    assert found["blobs"] == pushed.blobs
    assert sorted(found["commits"], key=lambda c: c["commit_id"]) == sorted(pushed.commits, key=lambda c: c["commit_id"])
    assert {s["snapshot_id"] for s in found["snapshots"]} == set(pushed.snapshots)


def test_building_the_same_tip_twice_gives_identical_bytes(hub, repo, pushed):
    commits = history.walk_commit_delta(repo, [pushed.tip[-64:]], [])
    first = build.build_mpack(hub, repo, commits)
    hub.store.delete("mpacks", first.mpack_id)
    second = build.build_mpack(hub, repo, commits)
    assert second == first


def test_incremental_fetch_carries_only_the_delta(app, hub, repo, pushed):
    have = pushed.commits[3]["commit_id"]
    result = fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[have])
    found = read_pack(download(app, result["mpack_url"]), pushed)
    assert [c["commit_id"] for c in found["commits"]] == [c["commit_id"] for c in pushed.commits[4:]]
    assert sorted(found["blobs"].values()) == [b"content 4\n", b"content 5\n"]  # only the new files


def test_incremental_fetch_is_cached_under_its_haves(hub, repo, pushed):
    have = [pushed.commits[3]["commit_id"]]
    first = fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=have)
    second = fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=have)
    full = fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])
    assert (first["cached"], second["cached"]) == (False, True)
    assert full["mpack_id"] != first["mpack_id"]


def test_incremental_walk_does_not_visit_old_history(hub, repo, app, owner, monkeypatch):
    long = History().linear(40)
    push_history(app, owner[1], PATH, long)
    loaded = []
    real = history.load_commits

    def counting(repo, digests, **kw):
        found = real(repo, digests, **kw)
        loaded.extend(found)
        return found

    monkeypatch.setattr(history, "load_commits", counting)
    delta = history.walk_commit_delta(repo, [long.tip[-64:]], [long.commits[-3]["commit_id"][-64:]])
    assert len(delta) == 2
    assert set(delta) <= set(loaded)  # the walk went through load_commits (the count below means something)
    assert len(loaded) <= 6  # the delta, its boundary and the have: not the 40-commit history


def test_merge_history_delta_excludes_what_the_have_side_reaches(hub, repo, app, owner):
    h = History().linear(3)
    base = h.tip
    side = h.commit({"side.txt": b"side"}, parents=[base])
    main = h.commit({"main.txt": b"main"}, parents=[base], files=h.snapshots[h.commits[2]["snapshot_id"]]["manifest"])
    merge = h.commit({"merged.txt": b"m"}, parents=[main["commit_id"], side["commit_id"]])
    push_history(app, owner[1], PATH, h, commits=h.commits[:3] + [main, side, merge])
    delta = history.walk_commit_delta(repo, [merge["commit_id"]], [side["commit_id"]])
    assert set(delta) == {main["commit_id"], merge["commit_id"]}


def test_thirty_two_threads_fetching_one_cold_tip_build_once(hub, repo, pushed, monkeypatch):
    builds = Spy(build.build_mpack)
    monkeypatch.setattr(fetch, "build_mpack", builds)
    barrier = threading.Barrier(32)
    results, errors = [], []

    def clone():
        barrier.wait()
        try:
            results.append(fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])["mpack_id"])
        except Exception as exc:  # noqa: BLE001 — collected and asserted below
            errors.append(exc)
        finally:
            hub.db.close()

    threads = [threading.Thread(target=clone) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(builds.calls) == 1
    assert len(results) == 32 and len(set(results)) == 1


# -- the route ---------------------------------------------------------------------------

def test_route_answers_a_signed_url_for_a_branch_name(app, pushed):
    answer = unpack(wire(app, "POST", f"{PATH}/fetch/mpack", {"want": ["main"], "have": []}, status=200))
    assert set(answer) >= {"mpack_id", "mpack_url", "commit_count", "blob_count", "size_bytes", "expires_at", "cached"}
    assert answer["commit_count"] == 6
    assert len(download(app, answer["mpack_url"])) == answer["size_bytes"]


def test_route_accepts_json(app, pushed):
    answer = app.post_json(f"{PATH}/fetch/mpack", {"want": [pushed.tip]}).json
    assert answer["cached"] is False


def test_route_names_unknown_ids(app, pushed):
    unknown = "ab" * 32
    reply = wire(app, "POST", f"{PATH}/fetch/mpack", {"want": [unknown, "nobranch"]}, status=404)
    assert unknown in reply.json["detail"] and "nobranch" in reply.json["detail"]


def test_route_refuses_an_empty_want(app, pushed):
    assert wire(app, "POST", f"{PATH}/fetch/mpack", {"want": []}, status=400).json["error"] == "bad_request"


@pytest.mark.parametrize("body", [{"want": "main"}, {"want": [1]}, {"want": ["main"], "have": "x"}, {"have": []}])
def test_route_refuses_wrong_types(app, pushed, body):
    assert wire(app, "POST", f"{PATH}/fetch/mpack", body, status=400).json["error"] == "invalid_field"


def test_route_refuses_a_malformed_have(app, pushed):
    assert wire(app, "POST", f"{PATH}/fetch/mpack", {"want": ["main"], "have": ["zz"]}, status=400).json["error"] == "invalid_id"


def test_private_repo_fetch_mpack_is_404_to_strangers(app, private_repo, stranger):
    wire(app, "POST", "/gabriel/secret/fetch/mpack", {"want": ["main"]}, status=404)
    wire(app, "POST", "/gabriel/secret/fetch/mpack", {"want": ["main"]}, token=stranger[1], status=404)


# -- what one request may cost in builds (mpack/hub/build_gate.py) ---------------------------------

def _one_builder(hub) -> None:
    hub.build_gate = BuildGate(dataclasses.replace(hub.settings, request_builds=1), hub.store, slot_wait=0.05)


def test_a_miss_while_every_request_builder_is_busy_is_a_503_to_retry(hub, app, pushed):
    _one_builder(hub)
    with hub.build_gate.slot():  # another request's build holds the worker's only builder
        busy = app.post_json(f"{PATH}/fetch/mpack", {"want": [pushed.tip], "have": []}, expect_errors=True)
    assert busy.status_int == 503 and busy.json["error"] == "busy" and busy.headers["Retry-After"] == "1"
    assert FetchMPackCache.select().count() == 0
    built = app.post_json(f"{PATH}/fetch/mpack", {"want": [pushed.tip], "have": []})
    assert built.json["cached"] is False  # the builder is free again: the same request builds


def test_a_cache_hit_and_a_prebuild_need_no_request_builder(hub, app, repo, pushed):
    _one_builder(hub)
    with hub.build_gate.slot():
        prebuilt = fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])  # as the prebuild job calls it
        hit = app.post_json(f"{PATH}/fetch/mpack", {"want": [pushed.tip], "have": []})
    assert prebuilt["cached"] is False
    assert hit.json["cached"] is True and hit.json["mpack_id"] == prebuilt["mpack_id"]


# -- one client's share of the builders (build_gate, mpack/http/clients.py) ----------------------

def _two_builders(hub) -> None:
    hub.build_gate = BuildGate(dataclasses.replace(hub.settings, request_builds=2), hub.store, slot_wait=0.05)


def _clone(app, tip: str, *, address: str, forwarded: str | None = None, token: str | None = None):
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return app.post_json(f"{PATH}/fetch/mpack", {"want": [tip], "have": []}, headers=headers,
                         extra_environ={"REMOTE_ADDR": address}, expect_errors=True)


def test_a_client_whose_build_is_running_is_answered_busy_at_once_while_another_client_builds(hub, app, pushed):
    _two_builders(hub)
    with hub.build_gate.slot("address:198.51.100.7"):  # that client's build of another commit
        again = _clone(app, pushed.tip, address="198.51.100.7")
        other = _clone(app, pushed.tip, address="198.51.100.8")
    assert again.status_int == 503 and again.json["error"] == "busy" and again.headers["Retry-After"] == "1"
    assert "this client holds 1 pack builder(s)" in again.json["detail"]
    assert other.status_int == 200 and other.json["cached"] is False  # a builder was free for it


def test_a_users_builds_count_as_one_client_from_any_address(hub, app, owner, pushed):
    _two_builders(hub)
    with hub.build_gate.slot("user:gabriel"):
        busy = _clone(app, pushed.tip, address="198.51.100.9", token=owner[1])
    assert busy.status_int == 503 and busy.json["error"] == "busy"


def test_the_client_behind_a_trusted_proxy_is_the_address_it_forwarded_last(hub, app, pushed):
    _two_builders(hub)
    with hub.build_gate.slot("address:203.0.113.7"):
        via_proxy = _clone(app, pushed.tip, address="127.0.0.1", forwarded="10.1.1.1, 203.0.113.7")
        spoofed = _clone(app, pushed.tip, address="192.0.2.44", forwarded="203.0.113.7")  # not a trusted peer
    assert via_proxy.status_int == 503  # the proxy's last hop is the client whose build runs
    assert spoofed.status_int == 200  # its header is ignored: the client is its own address


def test_the_client_share_is_given_back_when_its_build_fails(hub, app, pushed):
    _two_builders(hub)
    object_id, content = next(iter(pushed.blobs.items()))
    hub.store.delete(BLOBS, ids.hex_of(object_id))  # the build fails on it: 503 object_unavailable
    failed = _clone(app, pushed.tip, address="198.51.100.7")
    hub.store.put_bytes(BLOBS, ids.hex_of(object_id), content)
    assert failed.status_int == 503 and failed.json["error"] == "object_unavailable"
    assert _clone(app, pushed.tip, address="198.51.100.7").status_int == 200
