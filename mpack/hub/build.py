"""Building an mpack from a repository's rows and stored blobs.

The pack streams into a temp file in the store while being hashed, and is
committed under its sha256: memory holds commit metadata and the set of blob
ids, never blob bytes or the pack. Blobs are sorted by digest, snapshots by
digest, commits in canonical topological order, so one delta always gives the
same bytes and the same mpack id.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mpack.format import ids
from mpack.format.writer import MPackWriter
from mpack.hub.cache import PackStats
from mpack.hub.errors import ObjectUnavailable
from mpack.hub.history import CommitNode, iter_records, load_commits, topological
from mpack.hub.models import Object, Repo, Snapshot
from storage.base import BLOBS, MPACKS
from storage.errors import StoredObjectMissing

if TYPE_CHECKING:
    from mpack.hub.services import Hub

BATCH = 500
MPACK_PREFIX = "sha256:"
EMPTY_BLOB = ids.object_digest(b"")


def _snapshots(repo: Repo, digests: set[str]) -> Iterator[Snapshot]:
    ordered = sorted(digests)
    for start in range(0, len(ordered), BATCH):
        chunk = ordered[start:start + BATCH]
        query = Snapshot.select().where((Snapshot.repo == repo) & Snapshot.digest.in_(chunk)).order_by(Snapshot.digest)
        yield from query.iterator()


def _manifest_blobs(repo: Repo, snapshot_digests: set[str]) -> dict[str, str]:
    """digest → id spelling, for every blob the snapshots name."""
    blobs: dict[str, str] = {}
    for snapshot in _snapshots(repo, snapshot_digests):
        for object_id in snapshot.record["manifest"].values():
            blobs.setdefault(object_id[-64:], object_id)  # ids were verified when pushed
    return blobs


def blobs_for(repo: Repo, commits: dict[str, CommitNode]) -> dict[str, str]:
    """Blobs the delta's snapshots name, less those of the boundary commits the receiver has."""
    wanted = _manifest_blobs(repo, {c.snapshot for c in commits.values()})
    boundary = {p for c in commits.values() for p in c.parents if p not in commits}
    if boundary:
        had = _manifest_blobs(repo, {c.snapshot for c in load_commits(repo, boundary).values()})
        wanted = {d: spelled for d, spelled in wanted.items() if d not in had}
    return wanted


def _blob_sizes(repo: Repo, digests: list[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for start in range(0, len(digests), BATCH):
        chunk = digests[start:start + BATCH]
        sizes.update((o.digest, o.size) for o in Object.select(Object.digest, Object.size)
                     .where((Object.repo == repo) & Object.digest.in_(chunk)))
    return sizes


def _open_blob(hub: Hub, object_id: str):
    try:
        return hub.store.open(BLOBS, object_id)
    except StoredObjectMissing:  # quarantined by fsck, or lost: the owner must push it again
        raise ObjectUnavailable(object_id) from None


def build_mpack(hub: Hub, repo: Repo, commits: dict[str, CommitNode]) -> PackStats:
    """Write the pack of ``commits`` (with their snapshots and new blobs) into the store."""
    started = time.perf_counter()
    blobs = blobs_for(repo, commits)
    digests = sorted(blobs)
    sizes = _blob_sizes(repo, digests)
    with hub.store.new_file(MPACKS) as pending:
        writer = MPackWriter(pending)
        for digest in digests:
            if digest == EMPTY_BLOB:  # never uploaded by the CLI, always known
                writer.add_blob(blobs[digest], b"", 0)
                continue
            with _open_blob(hub, blobs[digest]) as source:
                writer.add_blob(blobs[digest], source, sizes[digest])
        for snapshot in _snapshots(repo, {c.snapshot for c in commits.values()}):
            writer.add_snapshot(snapshot.record)
        for record in iter_records(repo, topological(commits)):
            writer.add_commit(record)
        writer.finish()
        size = pending.size
        digest = pending.commit()
    hub.metrics.pack_built(time.perf_counter() - started, size)
    return PackStats(MPACK_PREFIX + digest, size, len(commits), len(digests))
