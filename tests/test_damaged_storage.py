"""Damaged or missing files are repaired (issue 9, item 7): cache hits, same-id writes, /fetch, fsck."""
from __future__ import annotations

import hashlib
import io
import json
import os

import pytest

from mpack import cli
from mpack.format import ids
from mpack.format.writer import MPackWriter
from mpack.hub import cache, fetch, fsck
from mpack.hub.models import FetchMPackCache, Object
from storage import BLOBS, MPACKS, LocalStore, MemoryStore, UrlSigner
from tests.factories import History, error_of, push_history, unpack, wire

PATH = "/gabriel/song"


@pytest.fixture
def pushed(app, owner, repo) -> History:
    h = History().linear(3)
    push_history(app, owner[1], PATH, h)
    return h


def damage(hub, namespace: str, digest: str, data: bytes = b"bit rot") -> None:
    """Overwrite a stored object in place, as a failing disk would."""
    path = hub.store.local_path(namespace, digest)
    with open(path, "wb") as out:
        out.write(data)


def get_url(app, url: str, status="*"):
    return app.get(url.replace("http://hub.test", ""), status=status, expect_errors=True)


def some_blob(h: History) -> tuple[str, bytes]:
    object_id = sorted(h.blobs)[0]
    return object_id, h.blobs[object_id]


# -- a cache hit whose pack is gone -------------------------------------------------------

def test_a_hit_whose_pack_file_is_gone_drops_the_row_and_rebuilds(hub, app, repo, pushed):
    first = fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])
    hub.store.delete(MPACKS, first["mpack_id"])

    again = fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])

    assert again["cached"] is False  # rebuilt, not handed out
    assert again["mpack_id"] == first["mpack_id"] and hub.store.exists(MPACKS, again["mpack_id"])
    assert get_url(app, again["mpack_url"]).status_int == 200
    assert fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])["cached"] is True


def test_a_hit_whose_pack_is_gone_does_not_slide_the_expiry(hub, clock, repo, pushed):
    first = fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])
    hub.store.delete(MPACKS, first["mpack_id"])
    clock.advance(2 * cache.HIT_WRITE_INTERVAL)
    assert cache.usable_row(hub, repo, pushed.tip) is None
    assert FetchMPackCache.select().where(FetchMPackCache.mpack_id == first["mpack_id"]).count() == 0


# -- writing over a damaged object at the same id -----------------------------------------

@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    signer = UrlSigner([("k1", b"secret-one-secret")], base_url="http://hub.test")
    return LocalStore(tmp_path / "store", signer) if request.param == "local" else MemoryStore(signer)


def damage_in(store, namespace: str, digest: str, data: bytes) -> None:
    if isinstance(store, MemoryStore):
        store.damage(namespace, digest, data)
    else:
        with open(store.local_path(namespace, digest), "wb") as out:
            out.write(data)


def read(store, namespace, digest) -> bytes:
    with store.open(namespace, digest) as source:
        return source.read()


def test_put_bytes_over_a_damaged_object_replaces_it(store):
    good = b"the real content\n"
    digest = hashlib.sha256(good).hexdigest()
    store.put_bytes(BLOBS, digest, good)
    damage_in(store, BLOBS, digest, b"the real c0ntent\n")
    assert not store.verify(BLOBS, digest)

    assert store.put_bytes(BLOBS, digest, good) is True
    assert read(store, BLOBS, digest) == good and store.verify(BLOBS, digest)
    assert store.put_bytes(BLOBS, digest, good) is False  # intact now: kept


def test_a_streamed_write_over_a_damaged_object_replaces_it(store):
    good = b"pack bytes" * 1000
    digest = hashlib.sha256(good).hexdigest()
    store.put_bytes(MPACKS, digest, good)
    damage_in(store, MPACKS, digest, good[:-1])
    with store.new_file(MPACKS) as pending:
        pending.write(good)
        pending.commit()
    assert pending.created is True
    assert read(store, MPACKS, digest) == good


def test_quarantine_moves_a_damaged_object_aside_and_keeps_an_intact_one(store):
    good, other = b"good", b"other"
    digest, kept = hashlib.sha256(good).hexdigest(), hashlib.sha256(other).hexdigest()
    store.put_bytes(BLOBS, digest, good)
    store.put_bytes(BLOBS, kept, other)
    damage_in(store, BLOBS, digest, b"bad")

    assert store.quarantine(BLOBS, digest) is not None
    assert store.quarantine(BLOBS, kept) is None  # intact: stays
    assert not store.exists(BLOBS, digest) and store.exists(BLOBS, kept)
    assert store.quarantine(BLOBS, digest) is None  # absent now


# -- /fetch never serves a damaged blob -----------------------------------------------------

def test_a_build_whose_blob_lost_its_row_is_refused_naming_the_blob(hub, app, owner, repo, pushed):
    """A snapshot names a blob the repo has no row for (a database restored from an older backup):
    the pack build stops with object_unavailable instead of a traceback."""
    object_id, _ = some_blob(pushed)
    Object.delete().where((Object.repo == repo) & (Object.digest == ids.hex_of(object_id))).execute()

    response = wire(app, "POST", f"{PATH}/fetch/mpack", {"want": [pushed.tip], "have": []}, token=owner[1])

    assert error_of(response, 503)["error"] == "object_unavailable"
    assert ids.hex_of(object_id) in response.json["detail"]


def test_fetch_refuses_a_damaged_blob_and_the_next_push_repairs_it(hub, app, owner, repo, pushed):
    object_id, content = some_blob(pushed)
    damage(hub, BLOBS, object_id)
    token = owner[1]

    response = wire(app, "POST", f"{PATH}/fetch", {"want": [pushed.tip], "have": []}, token=token)

    assert error_of(response, 503)["error"] == "object_unavailable"
    assert object_id in response.json["detail"]
    missing = unpack(wire(app, "POST", f"{PATH}/filter-objects", {"object_ids": sorted(pushed.blobs)}, token=token))
    assert missing["missing"] == [object_id]
    stored = unpack(wire(app, "POST", f"{PATH}/push/objects",
                         {"objects": [{"object_id": object_id, "content": content}]}, token=token, status=200))
    assert stored == {"stored": 1, "skipped": 0}
    bundle = unpack(wire(app, "POST", f"{PATH}/fetch", {"want": [pushed.tip], "have": []}, token=token, status=200))
    served = {o["object_id"]: o["content"] for o in bundle["objects"]}
    assert all(ids.object_digest(c) == ids.hex_of(o) for o, c in served.items()) and served[object_id] == content
    quarantined = list((hub.settings.home / "quarantine" / "blobs").iterdir())
    assert [p.name.split(".")[0] for p in quarantined] == [object_id]


# -- fsck ---------------------------------------------------------------------------------

def pack_with_a_lying_blob(hub, object_id: str) -> str:
    """A pack whose file hashes to its name but holds wrong bytes for a blob (built from a damaged blob)."""
    out = io.BytesIO()
    writer = MPackWriter(out)
    writer.add_blob(object_id, b"bit rot", 7)
    writer.finish()
    data = out.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    hub.store.put_bytes(MPACKS, digest, data)
    return digest


def cache_row_for(hub, repo, tip: str, digest: str) -> None:
    now = hub.now()
    FetchMPackCache.create(cache_id=cache.cache_id(repo.repo_id, tip), repo=repo, tip_commit_id=tip,
                           mpack_id="sha256:" + digest, created_at=now, expires_at=now + 86400, last_used_at=now)


def test_fsck_quarantines_what_is_damaged_and_lists_what_to_push_again(hub, app, owner, repo, pushed):
    blob_ids = sorted(pushed.blobs)
    damaged, lost = blob_ids[0], blob_ids[1]
    good_pack = fetch.wire_fetch_mpack(hub, repo, want=[pushed.commits[0]["commit_id"]], have=[])["mpack_id"]
    rotten_pack = fetch.wire_fetch_mpack(hub, repo, want=[pushed.commits[1]["commit_id"]], have=[])["mpack_id"]
    damage(hub, MPACKS, rotten_pack)
    damage(hub, BLOBS, damaged)
    os.unlink(hub.store.local_path(BLOBS, lost))
    lying_pack = pack_with_a_lying_blob(hub, damaged)
    cache_row_for(hub, repo, pushed.tip, lying_pack)
    admin = {"Authorization": f"Bearer {hub.settings.admin_token}"}

    dry = app.post_json("/admin/fsck", {"dry_run": True}, headers=admin, status=200).json
    report = app.post_json("/admin/fsck", {}, headers=admin, status=200).json

    assert {k: v for k, v in dry.items() if k not in ("dry_run", "duration_ms")} == \
        {k: v for k, v in report.items() if k not in ("dry_run", "duration_ms")}
    assert report["blobs_quarantined"] == [damaged] and report["blobs_missing"] == [lost]
    assert sorted(report["packs_quarantined"]) == sorted([ids.hex_of(rotten_pack), lying_pack])
    assert report["cache_rows_dropped"] == 2 and report["clean"] is False
    assert report["reupload"] == {"gabriel/song": sorted([damaged, lost])}
    assert hub.store.exists(MPACKS, good_pack) and not hub.store.exists(MPACKS, lying_pack)
    assert FetchMPackCache.select().where(FetchMPackCache.mpack_id == lying_pack).count() == 0
    assert len(list((hub.settings.home / "quarantine").rglob("*.*"))) == 3
    assert Object.select().where(Object.digest.in_([damaged, lost])).count() == 0

    push_history(app, owner[1], PATH, pushed)  # the owner pushes again: the two blobs are re-uploaded
    assert hub.store.verify(BLOBS, damaged) and hub.store.verify(BLOBS, lost)
    assert app.post_json("/admin/fsck", {}, headers=admin, status=200).json["clean"] is True
    answer = fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])
    assert answer["cached"] is False and get_url(app, answer["mpack_url"]).status_int == 200


def test_admin_fsck_needs_the_admin_token(app, owner):
    assert error_of(app.post_json("/admin/fsck", {}, expect_errors=True), 401)
    other = {"Authorization": f"Bearer {owner[1]}"}
    assert error_of(app.post_json("/admin/fsck", {}, headers=other, expect_errors=True), 403)
    admin_body = app.post_json("/admin/fsck", {"dry_run": "yes"}, headers=other, expect_errors=True)
    assert admin_body.status_int == 403


def test_cli_fsck_exits_2_when_it_found_damage_then_0(hub, pushed, monkeypatch, capsys):
    monkeypatch.setenv("MPACKHUB_HOME", str(hub.settings.home))
    monkeypatch.setenv("MPACKHUB_DATABASE_URL", hub.settings.database_url)
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)
    damage(hub, BLOBS, sorted(pushed.blobs)[0])

    assert cli.main(["fsck"]) == 2
    assert json.loads(capsys.readouterr().out)["blobs_quarantined"] == [sorted(pushed.blobs)[0]]
    assert cli.main(["fsck"]) == 0


def test_fsck_run_of_a_healthy_hub_is_clean(hub, repo, pushed):
    fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])
    report = fsck.run_fsck(hub)
    assert report.clean and report.blobs_checked == len(pushed.blobs) and report.packs_checked == 1


def test_quarantine_can_move_an_object_that_hashes_right_but_is_wrong_inside(store):
    data = b"a pack built from a damaged blob"
    digest = hashlib.sha256(data).hexdigest()
    store.put_bytes(MPACKS, digest, data)
    assert store.quarantine(MPACKS, digest) is None  # intact by its hash: kept
    assert store.quarantine(MPACKS, digest, keep_intact=False) is not None
    assert not store.exists(MPACKS, digest)
