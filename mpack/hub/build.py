"""Building an mpack from a repository's rows and stored blobs.

One pass over the delta's commit graph and the stored snapshot deltas
(``mpack.hub.deltas``): no whole manifest is decoded, except to bridge two
snapshot records that no stored delta joins (a branch switch in pack order,
or history older than the deltas). The pack streams into a temp file in the
store while being hashed and is committed under its sha256; every blob is
read on a helper thread ahead of the writer and checked against the CRC-32
recorded when its bytes were pushed and hashed (or its sha256, for rows older
than that) (``mpack.hub.blob_feed``); a stored blob that does not match fails
the build (``CorruptStoredBlob``) instead of shipping. Memory holds the commit
graph, one batch of deltas (what changed, not whole manifests), the ids of
the blobs to write and the read-ahead of blob bytes: the snapshot records are
encoded while the deltas are read and wait in a spill file (``SnapshotSpill``)
until the blobs are written. Blobs are sorted by digest, snapshots follow first-parent chains,
commits are in canonical topological order: one delta, one set of bytes.
"""
from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from mpack.format import ids
from mpack.format.layout import SMALL_BLOB
from mpack.format.spill import SnapshotSpill
from mpack.format.writer import MPackWriter
from mpack.hub import bulk, deltas, snapshots
from mpack.hub.blob_feed import BlobFeed, StoredBlob
from mpack.hub.cache import PackStats
from mpack.hub.deltas import Delta
from mpack.hub.errors import ObjectUnavailable
from mpack.hub.history import CommitNode, iter_records, load_commits, topological
from mpack.hub.models import Object, Repo
from storage.base import BLOBS, MPACKS
from storage.errors import StoredObjectMissing

if TYPE_CHECKING:
    from mpack.hub.services import Hub

BATCH = 500
MPACK_PREFIX = "sha256:"
EMPTY_BLOB = ids.object_digest(b"")


def snapshot_order(commits: dict[str, CommitNode]) -> list[str]:
    """Snapshot digests in pack order: commits parents first, following first-parent chains.

    Kahn's algorithm; after a commit, its first-parent child (lowest digest)
    comes next when ready, else the lowest ready digest. Consecutive snapshot
    records are then mostly parent and child, whose stored delta is the record.
    """
    children: dict[str, list[str]] = {digest: [] for digest in commits}
    waiting = {}
    for digest, commit in commits.items():
        parents = [p for p in dict.fromkeys(commit.parents) if p in commits]
        waiting[digest] = len(parents)
        for parent in parents:
            children[parent].append(digest)
    ready = [digest for digest, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: dict[str, None] = {}
    following = None
    while following is not None or ready:
        digest = following if following is not None else heapq.heappop(ready)
        order.setdefault(commits[digest].snapshot)
        following = None
        for child in sorted(children[digest]):
            waiting[child] -= 1
            if waiting[child] == 0:
                if following is None and commits[child].parents[0] == digest:
                    following = child
                else:
                    heapq.heappush(ready, child)
    return list(order)


def plan_snapshots(repo: Repo, commits: dict[str, CommitNode]) -> Iterator[Delta]:
    """The snapshot records of the pack in order, each a delta against the record before it.

    The first is in full, or against the snapshot of a boundary commit (one the
    receiver has: a parent outside the delta) when its stored delta names one.
    Deltas are read ``BATCH`` at a time: memory holds a batch, not the history.
    """
    order = snapshot_order(commits)
    boundary = {p for c in commits.values() for p in c.parents if p not in commits}
    held = {c.snapshot for c in load_commits(repo, boundary).values()} if boundary else set()
    previous: Delta | None = None
    for start in range(0, len(order), BATCH):
        batch = order[start:start + BATCH]
        stored = deltas.load(repo, batch)
        for digest in batch:
            delta = stored.pop(digest, None)
            if delta is None or not _joins(delta, previous, held):
                delta = _bridge(repo, digest, previous)
            elif previous is not None:
                delta = delta._replace(base_id=previous.snapshot_id)  # the record before, as it spells its id
            yield delta
            previous = delta


def _joins(delta: Delta, previous: Delta | None, held: set[str]) -> bool:
    if previous is None:
        return delta.base == "" or delta.base in held
    return delta.base == previous.digest


def _bridge(repo: Repo, digest: str, previous: Delta | None) -> Delta:
    """A delta no stored row gives: decode the two manifests and compare them."""
    records = snapshots.records(repo.repo_id, [digest] if previous is None else [digest, previous.digest])
    if previous is None:
        return deltas.delta_of(digest, records[digest])
    return deltas.delta_of(digest, records[digest], previous.digest, records[previous.digest])


class BlobsAdded:
    """digest → id spelling of the blobs the records seen add, less those a first delta's base already had."""

    def __init__(self) -> None:
        self.blobs: dict[str, str] = {}
        self._first: Delta | None = None

    def see(self, delta: Delta) -> None:
        if self._first is None:
            self._first = delta
        for object_id in delta.changed.values():
            self.blobs.setdefault(object_id[-64:], object_id)  # ids were verified when pushed

    def result(self) -> dict[str, str]:
        if self._first is not None and self._first.base:
            for object_id in self._first.removed.values():  # a rename: the receiver has the blob
                self.blobs.pop(object_id[-64:], None)
        return self.blobs


def blobs_for(repo: Repo, commits: dict[str, CommitNode]) -> dict[str, str]:
    """Blobs the delta's snapshots add (digest → id as spelled)."""
    added = BlobsAdded()
    for delta in plan_snapshots(repo, commits):
        added.see(delta)
    return added.result()


def stored_blobs(repo: Repo, blobs: dict[str, str]) -> list[StoredBlob]:
    """The blobs to write, sorted by digest, with the size and CRC-32 (None: not recorded) of their rows.

    Raises:
        ObjectUnavailable: a blob the snapshots name has no row in this repo.
    """
    order = [StoredBlob(digest, blobs[digest], size, crc) for digest, size, crc in
             bulk.rows_by_digest(Object, repo.repo_id, blobs, ("digest", "size", "crc32"))]
    if EMPTY_BLOB in blobs:  # never stored, never read
        order.append(StoredBlob(EMPTY_BLOB, blobs[EMPTY_BLOB], 0, None))
    if len(order) < len(blobs):
        found = {blob.digest for blob in order}
        raise ObjectUnavailable(min(digest for digest in blobs if digest not in found))
    order.sort()
    return order


def _write_blobs(hub: Hub, writer: MPackWriter, order: list[StoredBlob]) -> None:
    with BlobFeed(order, lambda digest: _open_blob(hub, digest), concurrent_opens=hub.store.concurrent_opens) as feed:
        for group in feed.groups():
            if not isinstance(group, list):
                writer.add_blob(*group)
                continue
            run: list[tuple[str, bytes]] = []  # consecutive small blobs go to the writer in one call
            for object_id, data, size in group:
                if size <= SMALL_BLOB:
                    run.append((object_id, data))
                    continue
                if run:
                    writer.add_small_blobs(run)
                    run = []
                writer.add_blob(object_id, data, size)
            if run:
                writer.add_small_blobs(run)


def _commit_records(repo: Repo, commits: dict[str, CommitNode]) -> Iterator[dict]:
    return iter_records(repo, topological(commits))


def _open_blob(hub: Hub, digest: str):
    try:
        return hub.store.open(BLOBS, digest)
    except StoredObjectMissing:  # quarantined by fsck, or lost: the owner must push it again
        raise ObjectUnavailable(digest) from None


def build_mpack(hub: Hub, repo: Repo, commits: dict[str, CommitNode], *,
                check_room: Callable[[int], None] | None = None) -> PackStats:
    """Write the pack of ``commits`` (with their snapshots and new blobs) into the store.

    ``check_room`` is given the blob bytes the pack will hold before any is written (it raises to refuse).
    """
    started = time.perf_counter()
    level = hub.settings.pack_blob_zstd_level
    with SnapshotSpill(level or 3) as spill:
        # One pass over the deltas: their records are encoded now (they follow the blobs in the pack).
        added = BlobsAdded()
        for delta in plan_snapshots(repo, commits):
            added.see(delta)
            spill.add_delta(delta.snapshot_id, delta.fields, delta.base_id or None, delta.changed,
                            list(delta.removed))
        order = stored_blobs(repo, added.result())
        del added  # the blobs travel as ``order`` now: during the writes, memory holds only that
        if check_room is not None:
            check_room(sum(blob.size for blob in order))
        with hub.store.new_file(MPACKS) as pending:
            # The pending file hashes what it stores (its digest is the mpack id): the writer reuses that hash.
            writer = MPackWriter(pending, level=level or 3, compress_blobs=level > 0,
                                 running_sha256=lambda: pending.sha256_hex)
            _write_blobs(hub, writer, order)
            writer.add_spilled_snapshots(spill)
            for record in _commit_records(repo, commits):
                writer.add_commit(record)
            writer.finish()
            size = pending.size
            digest = pending.commit()
    hub.metrics.pack_built(time.perf_counter() - started, size)
    return PackStats(MPACK_PREFIX + digest, size, len(commits), len(order))
