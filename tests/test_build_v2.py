"""Builds from stored snapshot deltas (format v2): no manifest decoded, blobs verified, old packs never served."""
from __future__ import annotations

import io
import zlib

import pytest

from mpack.format.layout import SnapshotRecord
from mpack.format.reader import iter_mpack
from mpack.hub import build, cache, deltas, fetch, fsck, gc, migrations, snapshots
from mpack.hub.errors import CorruptStoredBlob
from mpack.hub.models import FetchMPackCache, Object, SchemaVersion, SnapshotDelta
from storage.base import BLOBS, MPACKS
from tests.factories import History, push_history
from tests.test_format import v1_example_pack

PATH = "/gabriel/song"


def branchy() -> History:
    """A root, two branches with adds, changes, deletions and a rename, a merge, then more commits."""
    h = History()
    root = h.commit({"a.txt": b"a", "b.txt": b"b", "empty": b""})
    h.commit({"a.txt": b"a2", "c/d.txt": b"d"})
    left = h.commit({"b.txt": None})
    files = dict(h.snapshots[root["snapshot_id"]]["manifest"])
    files["moved.txt"] = files.pop("a.txt")
    right = h.commit({"e.txt": b"e"}, parents=[root["commit_id"]], files=files)
    merged = {**h.snapshots[left["snapshot_id"]]["manifest"], **h.snapshots[right["snapshot_id"]]["manifest"]}
    h.commit({}, parents=[left["commit_id"], right["commit_id"]], files=merged)
    h.commit({"f.txt": b"f", "empty": None})
    return h


def snapshots_in(data: bytes, held: History | None = None) -> list[SnapshotRecord]:
    known = held.snapshots if held else {}
    return [r for r in iter_mpack(io.BytesIO(data), snapshot_base=lambda s: known[s]["manifest"] if s in known else None)
            if isinstance(r, SnapshotRecord)]


def pack_bytes(hub, answer: dict) -> bytes:
    with hub.store.open(MPACKS, answer["mpack_id"][-64:]) as source:
        return source.read()


def test_push_stores_each_new_snapshot_as_its_delta_from_the_first_parent(app, owner, repo):
    h = branchy()
    push_history(app, owner[1], PATH, h)
    rows = deltas.load(repo, [s[-64:] for s in h.snapshots])
    assert len(rows) == len(h.snapshots)
    for commit in h.commits:
        delta = rows[commit["snapshot_id"][-64:]]
        parent = commit["parent_commit_id"]
        old = h.snapshots[next(c for c in h.commits if c["commit_id"] == parent)["snapshot_id"]]["manifest"] \
            if parent else {}
        assert (delta.changed, delta.removed) == deltas.diff(old, h.snapshots[commit["snapshot_id"]]["manifest"])
        assert delta.fields == {"created_at": commit["committed_at"]}


def test_a_linear_build_decodes_no_manifest(hub, app, owner, repo, monkeypatch):
    h = History().linear(30)
    push_history(app, owner[1], PATH, h)
    decoded = []
    monkeypatch.setattr(deltas, "snapshot_record", lambda *a: decoded.append(a))
    answer = fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])
    assert decoded == []
    assert [r.data for r in snapshots_in(pack_bytes(hub, answer))] == list(h.snapshots.values())


def test_a_build_with_branches_and_merges_carries_every_snapshot(hub, app, owner, repo):
    h = branchy()
    push_history(app, owner[1], PATH, h)
    answer = fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])
    records = snapshots_in(pack_bytes(hub, answer))
    assert sorted(r.data["snapshot_id"] for r in records) == sorted(h.snapshots)
    assert all(r.data == h.snapshots[r.data["snapshot_id"]] for r in records)
    assert records[0].base is None and all(r.base is not None for r in records[1:])


def pushed_as_before_deltas(monkeypatch) -> None:
    """Pushes from now on keep every snapshot record in full, as every push did before deltas existed."""
    monkeypatch.setattr(snapshots, "KEYFRAME_DEPTH", 1)


def test_history_pushed_before_deltas_builds_the_same_pack(hub, app, owner, repo, monkeypatch):
    h = branchy()
    pushed_as_before_deltas(monkeypatch)
    push_history(app, owner[1], PATH, h)
    with_deltas = fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])
    SnapshotDelta.delete().execute()
    FetchMPackCache.delete().execute()
    without = fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])
    assert without["mpack_id"] == with_deltas["mpack_id"]


def test_an_incremental_pack_is_a_delta_against_the_receivers_snapshot(hub, app, owner, repo):
    h = History()
    h.commit({f"dir/f{n}.txt": f"{n}".encode() for n in range(300)})
    have = h.commit({"x": b"x"})["commit_id"]
    h.commit({"dir/f7.txt": b"changed", "x": None})
    push_history(app, owner[1], PATH, h)
    answer = fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[have])
    data = pack_bytes(hub, answer)
    assert len(data) < 1500 and answer["blob_count"] == 1
    [record] = snapshots_in(data, h)
    assert record.base == h.commits[1]["snapshot_id"] and record.changed == {"dir/f7.txt": h.files["dir/f7.txt"]}
    assert record.data == h.snapshots[h.commits[2]["snapshot_id"]]


def test_a_corrupt_stored_blob_fails_the_build_and_ships_nothing(hub, app, owner, repo):
    h = History()
    h.commit({"song.mid": b"the real notes"})
    push_history(app, owner[1], PATH, h)
    digest = h.files["song.mid"][-64:]
    path = hub.store.local_path(BLOBS, digest)
    with open(path, "r+b") as damaged:
        damaged.write(b"THE")
    with pytest.raises(CorruptStoredBlob) as info:
        fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])
    assert info.value.digest == digest and "corrupt (its CRC-32" in str(info.value)
    assert FetchMPackCache.select().count() == 0 and list(hub.store.iter_digests(MPACKS)) == []


def test_a_stored_blob_of_the_wrong_length_fails_the_build(hub, app, owner, repo):
    h = History()
    h.commit({"song.mid": b"the real notes"})
    push_history(app, owner[1], PATH, h)
    with open(hub.store.local_path(BLOBS, h.files["song.mid"][-64:]), "ab") as longer:
        longer.write(b"!")
    with pytest.raises(CorruptStoredBlob):
        fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])


def test_a_cached_pack_of_an_older_format_is_never_handed_out(hub, app, owner, repo):
    h = History().linear(3)
    push_history(app, owner[1], PATH, h)
    first = fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])
    FetchMPackCache.update(format_version=1, mpack_id="sha256:" + "0" * 64).execute()  # as cached before the upgrade
    again = fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])
    assert again["cached"] is False and again["mpack_id"] == first["mpack_id"]
    assert [r.format_version for r in FetchMPackCache.select()] == [cache.FORMAT_VERSION]
    assert fetch.wire_fetch_mpack(hub, repo, want=["main"], have=[])["cached"] is True


def test_gc_removes_rows_of_an_older_format_once_no_url_from_them_can_be_live(hub, app, owner, repo, clock):
    h = History().linear(2)
    push_history(app, owner[1], PATH, h)
    answer = fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])
    FetchMPackCache.update(format_version=1).execute()
    assert gc.run_gc(hub).cache_rows_deleted == 0  # a URL issued just now may still be in use
    clock.advance(hub.settings.url_ttl + cache.HIT_WRITE_INTERVAL + gc.EXPIRY_SLACK + 1)
    report = gc.run_gc(hub)
    assert report.cache_rows_deleted == 1 and report.mpacks_deleted == 1
    assert not hub.store.exists(MPACKS, answer["mpack_id"][-64:])


def test_the_deltas_migration_versions_old_rows_and_backfills_deltas(hub, app, owner, repo, monkeypatch):
    h = branchy()
    pushed_as_before_deltas(monkeypatch)
    push_history(app, owner[1], PATH, h)
    fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])
    expected = deltas.load(repo, [s[-64:] for s in h.snapshots])
    # Back to the schema before the deltas: no delta table, no format column.
    hub.db.execute_sql("DROP TABLE snapshot_delta")
    hub.db.execute_sql("ALTER TABLE fetch_mpack_cache DROP COLUMN format_version")
    mine = migrations.MIGRATIONS.index(migrations._v6_snapshot_deltas_and_pack_versions) + 1
    SchemaVersion.delete().where(SchemaVersion.version >= mine).execute()
    migrations.migrate(hub.db)
    hub.db.connect(reuse_if_open=True)
    assert [r.format_version for r in FetchMPackCache.select()] == [1]
    assert deltas.load(repo, [s[-64:] for s in h.snapshots]) == expected
    assert fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])["cached"] is False


def test_push_records_each_blobs_crc32_and_rows_from_before_it_are_checked_by_sha256(hub, app, owner, repo):
    h = History()
    h.commit({"song.mid": b"the real notes", "empty": b""})
    push_history(app, owner[1], PATH, h)
    assert {o.digest: o.crc32 for o in Object.select()} == {h.files["song.mid"][-64:]: zlib.crc32(b"the real notes")}
    first = fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])
    # Back to the schema before checksums: the column goes, the migration brings it back empty.
    hub.db.execute_sql("ALTER TABLE object DROP COLUMN crc32")
    checksums = migrations.MIGRATIONS.index(migrations._v7_blob_checksums) + 1
    SchemaVersion.delete().where(SchemaVersion.version >= checksums).execute()
    migrations.migrate(hub.db)
    hub.db.connect(reuse_if_open=True)
    assert {o.crc32 for o in Object.select()} == {None}
    FetchMPackCache.delete().execute()
    hub.store.delete(MPACKS, first["mpack_id"][-64:])
    assert fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])["mpack_id"] == first["mpack_id"]
    with open(hub.store.local_path(BLOBS, h.files["song.mid"][-64:]), "r+b") as damaged:
        damaged.write(b"THE")
    FetchMPackCache.delete().execute()
    with pytest.raises(CorruptStoredBlob, match="hash to"):  # no CRC on the row: its sha256 caught it
        fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])


def test_snapshot_order_follows_first_parent_chains():
    h = branchy()
    nodes = {c["commit_id"]: build.CommitNode(c["commit_id"], c["commit_id"],
                                              [p for p in (c["parent_commit_id"], c["parent2_commit_id"]) if p],
                                              c["snapshot_id"], 0) for c in h.commits}
    order = build.snapshot_order(nodes)
    assert sorted(order) == sorted(h.snapshots) and order[0] == h.commits[0]["snapshot_id"]
    assert order == build.snapshot_order(dict(reversed(list(nodes.items()))))


def test_fsck_keeps_incremental_and_old_format_packs_and_still_finds_a_damaged_one(hub, app, owner, repo):
    h = History().linear(4)
    push_history(app, owner[1], PATH, h)
    incremental = fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[h.commits[1]["commit_id"]])
    with hub.store.new_file(MPACKS) as pending:  # a pack cached before the upgrade: intact, only outdated
        pending.write(v1_example_pack())
        old = pending.commit()
    assert fsck.run_fsck(hub).packs_quarantined == []
    assert hub.store.exists(MPACKS, incremental["mpack_id"][-64:]) and hub.store.exists(MPACKS, old)
    with open(hub.store.local_path(MPACKS, incremental["mpack_id"][-64:]), "r+b") as damaged:
        damaged.seek(-40, 2)
        damaged.write(b"\xff")
    assert fsck.run_fsck(hub).packs_quarantined == [incremental["mpack_id"][-64:]]
