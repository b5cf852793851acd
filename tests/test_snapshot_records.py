"""Snapshot records at rest: in full every KEYFRAME_DEPTH deltas down a chain, rebuilt from deltas otherwise."""
from __future__ import annotations

import pytest

from mpack.hub import fetch, fsck, migrations, snapshots
from mpack.hub.models import SchemaVersion, Snapshot, SnapshotDelta
from tests.factories import History, push_history, unpack, wire

PATH = "/gabriel/song"
DEPTH = 4  # a short chain, so that a few commits cross several keyframes


@pytest.fixture(autouse=True)
def short_chains(monkeypatch):
    monkeypatch.setattr(snapshots, "KEYFRAME_DEPTH", DEPTH)


def every_kind_of_change() -> History:
    """Adds, changes, deletions, a rename, an empty file, unicode paths, two branches and a merge, past several keyframes."""
    h = History()
    root = h.commit({"a.txt": b"a", "empty": b"", "ünï/cødé ✓.txt": b"u"})
    for n in range(6):
        h.commit({f"n{n}.txt": b"%d" % n, "a.txt": b"a%d" % n})
    h.commit({"empty": None, "n0.txt": None})
    left = h.commit({"ünï/cødé ✓.txt": b"u2"})
    files = dict(h.snapshots[root["snapshot_id"]]["manifest"])
    files["moved.txt"] = files.pop("a.txt")
    for n in range(5):
        right = h.commit({f"r{n}": b"r%d" % n}, parents=[root["commit_id"]] if n == 0 else None, files=files if n == 0 else None)
    merged = {**h.snapshots[left["snapshot_id"]]["manifest"], **h.snapshots[right["snapshot_id"]]["manifest"]}
    h.commit({}, parents=[left["commit_id"], right["commit_id"]], files=merged)
    for _ in range(6):
        h.commit()
    return h


def kept_in_full() -> dict[str, bool]:
    return {row.digest: row.record is not None for row in Snapshot.select()}


def depth_of() -> dict[str, int]:
    return {row.digest: row.depth for row in SnapshotDelta.select()}


def test_a_chain_keeps_one_record_in_full_every_keyframe_depth(app, owner, repo):
    h = History().linear(11)
    push_history(app, owner[1], PATH, h)
    chain = [c["snapshot_id"] for c in h.commits]
    assert [depth_of()[s] for s in chain] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2]
    assert [kept_in_full()[s] for s in chain] == [d == 0 for d in [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2]]


def test_a_chain_goes_on_across_pushes(app, owner, repo):
    h = History().linear(3)
    push_history(app, owner[1], PATH, h)
    h.linear(3)
    push_history(app, owner[1], PATH, h, commits=h.commits[3:])
    assert [depth_of()[c["snapshot_id"]] for c in h.commits] == [0, 1, 2, 3, 0, 1]


def test_every_record_reads_back_as_pushed(app, owner, repo):
    h = every_kind_of_change()
    push_history(app, owner[1], PATH, h)
    assert not all(kept_in_full().values())
    assert snapshots.records(repo.repo_id, [s[-64:] for s in h.snapshots]) == {s[-64:]: r for s, r in h.snapshots.items()}


def test_a_rebuilt_record_has_its_keys_in_the_order_a_record_kept_in_full_has(app, owner, repo):
    h = History()
    h.commit({"b": b"b", "a": b"a"})
    h.commit({"c": b"c", "0": b"0"})
    push_history(app, owner[1], PATH, h)
    record = snapshots.record(repo.repo_id, h.commits[1]["snapshot_id"])
    assert list(record) == sorted(record) and list(record["manifest"]) == ["0", "a", "b", "c"]


def test_the_v1_wire_fetch_serves_records_rebuilt_from_deltas(app, owner, repo):
    h = every_kind_of_change()
    push_history(app, owner[1], PATH, h)
    answer = unpack(wire(app, "POST", f"{PATH}/fetch", {"want": [h.tip], "have": []}, token=owner[1], status=200))
    by_id = {s["snapshot_id"]: s for s in answer["snapshots"]}
    assert len(answer["snapshots"]) == len(by_id) and by_id == h.snapshots


def test_an_incremental_pack_over_a_base_kept_as_a_delta_is_built_and_verified(hub, app, owner, repo):
    h = History().linear(DEPTH + 2)
    have = h.tip
    h.commit({"file1.txt": None, "new.txt": b"new"})
    push_history(app, owner[1], PATH, h)
    assert not kept_in_full()[h.commits[-2]["snapshot_id"]]
    answer = fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[have])
    assert fsck.pack_intact(hub, answer["mpack_id"][-64:])


def test_records_of_snapshots_the_repo_lacks_are_missing_from_the_answer(app, owner, repo):
    h = History().linear(3)
    push_history(app, owner[1], PATH, h)
    tip = h.commits[-1]["snapshot_id"]
    assert snapshots.records(repo.repo_id, ["0" * 64, tip]).keys() == {tip}
    # A chain whose base row is gone ends the walk instead of looping: its records are missing too.
    Snapshot.delete().where(Snapshot.digest == h.commits[0]["snapshot_id"]).execute()
    assert snapshots.records(repo.repo_id, [tip]) == {}
    assert fsck._snapshot_manifest(tip) is None  # fsck's base lookup: not held, not a KeyError


def test_the_depth_migration_gives_every_older_row_depth_zero(hub, app, owner, repo, monkeypatch):
    monkeypatch.setattr(snapshots, "KEYFRAME_DEPTH", 1)  # every record kept in full, as before depths existed
    h = History().linear(3)
    push_history(app, owner[1], PATH, h)
    hub.db.execute_sql("ALTER TABLE snapshot_delta DROP COLUMN depth")
    mine = migrations.MIGRATIONS.index(migrations._v8_snapshot_chain_depths) + 1
    SchemaVersion.delete().where(SchemaVersion.version >= mine).execute()
    migrations.migrate(hub.db)
    hub.db.connect(reuse_if_open=True)
    assert set(depth_of().values()) == {0}
    monkeypatch.setattr(snapshots, "KEYFRAME_DEPTH", DEPTH)
    h.linear(2)
    push_history(app, owner[1], PATH, h, commits=h.commits[3:])
    assert [depth_of()[c["snapshot_id"]] for c in h.commits] == [0, 0, 0, 1, 2]
    assert snapshots.record(repo.repo_id, h.commits[-1]["snapshot_id"]) == h.snapshots[h.commits[-1]["snapshot_id"]]


@pytest.mark.parametrize("new, stored, expected", [
    ([("a", "")], {}, {"a": 0}),
    ([("c", "b"), ("b", "a"), ("a", "")], {}, {"a": 0, "b": 1, "c": 2}),  # bases resolved first, whatever the order
    ([("x", "old")], {"old": DEPTH - 1}, {"x": 0}),  # the chain reaches the keyframe depth: kept in full
    ([("x", "old")], {"old": 1}, {"x": 2}),
    ([("x", "unknown")], {}, {"x": 1}),  # a base with no depth recorded was kept in full
])
def test_depths(new, stored, expected):
    assert snapshots.depths(stored, new) == expected


def test_the_compaction_migration_keeps_in_full_only_the_keyframes_of_older_rows(hub, app, owner, repo, monkeypatch):
    """Schema 9: rows from before depths (all kept in full, depth 0) and rows pushed after (depths counted
    from them) end up as if pushed today; every record reads back the same, v1 fetch and fsck included."""
    monkeypatch.setattr(snapshots, "KEYFRAME_DEPTH", 1)  # every record kept in full, as before depths existed
    h = every_kind_of_change()
    push_history(app, owner[1], PATH, h, commits=h.commits[:12])
    monkeypatch.setattr(snapshots, "KEYFRAME_DEPTH", DEPTH)
    push_history(app, owner[1], PATH, h, commits=h.commits[12:])  # depths counted from the old rows' 0
    digests = [c["snapshot_id"] for c in h.commits]
    before = snapshots.records(repo.repo_id, digests)
    assert sum(kept_in_full().values()) > len(set(digests)) // 2
    mine = migrations.MIGRATIONS.index(migrations._v9_compact_snapshot_records) + 1
    SchemaVersion.delete().where(SchemaVersion.version >= mine).execute()
    migrations.migrate(hub.db)
    hub.db.connect(reuse_if_open=True)
    fresh = snapshots.depths({}, [(row.digest, row.base) for row in SnapshotDelta.select()])
    assert depth_of() == fresh and max(fresh.values()) == DEPTH - 1
    assert kept_in_full() == {digest: depth == 0 for digest, depth in fresh.items()}
    assert snapshots.records(repo.repo_id, digests) == before == {d: h.snapshots[d] for d in digests}
    assert snapshots.compact(repo.repo_id) == 0  # done: a second pass changes nothing
    assert fsck.run_fsck(hub).as_dict()["clean"] is True


def test_compaction_leaves_a_repo_whose_chain_lost_its_base_as_it_is(hub, app, owner, repo, monkeypatch):
    monkeypatch.setattr(snapshots, "KEYFRAME_DEPTH", 1)
    h = History().linear(4)
    push_history(app, owner[1], PATH, h, commits=h.commits[:2])
    monkeypatch.setattr(snapshots, "KEYFRAME_DEPTH", DEPTH)
    push_history(app, owner[1], PATH, h, commits=h.commits[2:])  # kept as deltas on the second record
    SnapshotDelta.update(base="0" * 64).where(SnapshotDelta.digest == h.commits[1]["snapshot_id"]).execute()
    kept = kept_in_full()
    assert snapshots.compact(repo.repo_id) == 0
    assert kept_in_full() == kept


def test_compaction_leaves_a_repo_whose_new_keyframe_cannot_be_rebuilt_as_it_is(hub, app, owner, repo, monkeypatch):
    monkeypatch.setattr(snapshots, "KEYFRAME_DEPTH", 1)
    h = History().linear(6)
    push_history(app, owner[1], PATH, h, commits=h.commits[:2])
    monkeypatch.setattr(snapshots, "KEYFRAME_DEPTH", DEPTH)
    push_history(app, owner[1], PATH, h, commits=h.commits[2:])  # depths 1, 2, 3, 0 over the two old rows
    lost = h.commits[3]["snapshot_id"]  # below the fifth record, which compaction would make a keyframe
    SnapshotDelta.delete().where(SnapshotDelta.digest == lost).execute()
    kept, depths = kept_in_full(), depth_of()
    assert snapshots.compact(repo.repo_id) == 0
    assert (kept_in_full(), depth_of()) == (kept, depths)
