"""Snapshot records at rest: one in full every ``KEYFRAME_DEPTH`` deltas, the others rebuilt from their deltas.

Every pushed snapshot has a delta row (``mpack.hub.deltas``: what changed
against the snapshot of its first parent's commit). Keeping every record in
full as well made a push write, and the database hold, commits × files: the
bench's reference history made a 172 MB SQLite file at 2,000 commits (9.5 MB
kept this way) and a 2.6 GB one at 8,000. Now ``snapshot.record`` holds the record
only where a delta chain starts or every ``KEYFRAME_DEPTH`` links down it
(``depth`` 0 on the delta row); elsewhere it holds JSON ``null`` and the
record is its base's record with the delta applied. Reading a record costs at
most ``KEYFRAME_DEPTH`` deltas of one row each (git caps its delta chains the
same way, ``pack.depth``, 50 by default). Rows written before depths existed
kept every record in full at depth 0; schema 9 compacts them (``compact``).

Only the v1 wire fetch, fsck, a build's bridge between two unrelated records
and a push whose base lies outside it read whole records; builds read deltas.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from mpack.hub import bulk
from mpack.hub.jsonlike import JsonText
from mpack.hub.models import Repo, Snapshot, SnapshotDelta

KEYFRAME_DEPTH = 50
NOT_KEPT = JsonText("null")  # snapshot.record of a snapshot kept as its delta only


class _Link:
    """A record kept as a delta: its base's manifest with ``changed`` set and ``removed`` taken away."""

    __slots__ = ("snapshot_id", "base", "fields", "changed", "removed", "depth")

    def __init__(self, snapshot_id: str, base: str, fields: str, changed: str, removed: str, depth: int) -> None:
        self.snapshot_id = snapshot_id
        self.base = base
        self.fields = json.loads(fields)
        self.changed = json.loads(changed)
        self.removed = json.loads(removed)
        self.depth = depth


def depths(stored: Mapping[str, int], new: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Chain depth of each new snapshot: 0 where it is kept in full, else one more than its base's.

    Args:
        stored: depth of bases already stored (a base missing here is taken as
            kept in full: rows from before depths were recorded are).
        new: (digest, base digest or "") of the new snapshots, in any order;
            a base among them is resolved first.
    """
    bases = dict(new)
    found: dict[str, int] = {}
    for digest in bases:
        chain = []
        while digest not in found and digest in bases and bases[digest]:
            chain.append(digest)
            digest = bases[digest]
        depth = found.get(digest, 0 if digest in bases else stored.get(digest, 0))
        for link in reversed(chain):
            depth = depth + 1 if depth + 1 < KEYFRAME_DEPTH else 0
            found[link] = depth
        if digest in bases and digest not in found:
            found[digest] = 0  # no base: the start of a chain
    return found


def stored_depths(repo_id: str, digests: Iterable[str]) -> dict[str, int]:
    """The recorded chain depth of these stored snapshots (absent ones are missing from the result)."""
    return dict(bulk.rows_by_digest(SnapshotDelta, repo_id, digests, ("digest", "depth")))


def records(repo_id: str, digests: Iterable[str]) -> dict[str, dict]:
    """The full records of these snapshots of the repo (absent ones are missing from the result).

    Two queries: the delta rows of every chain from these snapshots up to the
    nearest record kept in full, then those full records; each record is then
    rebuilt, those shared by several chains once.
    """
    wanted = set(digests)
    links = {digest: _Link(*row) for digest, *row in _chains(repo_id, wanted)}
    keyframes = {digest for digest, link in links.items() if link.depth == 0} | (wanted - links.keys())
    full = {}
    for digest, text in bulk.rows_by_digest(Snapshot, repo_id, keyframes, ("digest", "record")):
        record = json.loads(text)
        if record is not None:
            full[digest] = record
    for digest in wanted:
        _rebuild(digest, full, links, wanted)
    return {digest: full[digest] for digest in wanted if digest in full}


def _chains(repo_id: str, digests: set[str]) -> list[tuple]:
    """The delta rows of ``digests`` and of their bases, up the chain to a depth-0 row (one recursive query)."""
    meta = SnapshotDelta._meta
    database = meta.database
    table = f'"{meta.table_name}"'
    columns = ", ".join(f"d.{name}" for name in _LINK_COLUMNS)
    mark = database.param
    found = []
    for chunk in _chunks(sorted(digests)):
        found += database.execute_sql(
            f"WITH RECURSIVE chain(digest) AS ("
            f" SELECT digest FROM {table} WHERE repo_id = {mark} AND digest IN ({', '.join([mark] * len(chunk))})"
            f" UNION SELECT d.base FROM {table} d JOIN chain c ON d.digest = c.digest"
            f" WHERE d.repo_id = {mark} AND d.depth > 0)"
            f" SELECT {columns} FROM {table} d JOIN chain c ON d.digest = c.digest WHERE d.repo_id = {mark}",
            [repo_id, *chunk, repo_id, repo_id]).fetchall()
    return found


_LINK_COLUMNS = ("digest", "snapshot_id", "base", "fields", "changed", "removed", "depth")


def _rebuild(digest: str, full: dict[str, dict], links: dict[str, _Link], wanted: set[str]) -> None:
    """Put ``digest``'s record into ``full``: its nearest full ancestor's manifest with the chain's
    deltas applied in place; records of the chain that are ``wanted`` too are kept on the way."""
    chain = []
    while digest not in full:
        if digest not in links:
            return  # absent (or its base is): the caller reports it missing
        chain.append(digest)
        digest = links[digest].base
    manifest = dict(full[digest]["manifest"])
    for digest in reversed(chain):
        link = links[digest]
        for path in link.removed:
            manifest.pop(path, None)
        manifest.update(link.changed)
        if digest in wanted:
            # Keys sorted, as a record kept in full reads back (stored with sorted keys).
            record = {**link.fields, "snapshot_id": link.snapshot_id, "manifest": dict(sorted(manifest.items()))}
            full[digest] = dict(sorted(record.items()))


def record(repo_id: str, digest: str) -> dict:
    """The full record of one stored snapshot; KeyError if the repo has none."""
    return records(repo_id, [digest])[digest]


def compact(repo_id: str) -> int:
    """Recompute the depth of every delta chain of the repo from its start and keep in full only the
    records at depth 0 → how many records it stopped keeping.

    For rows written before depths existed (schema 8 gave them all depth 0, every record kept in
    full). Records that land on a keyframe but were kept as deltas are rebuilt first, from the chains
    as they stand; a repo with such a record that cannot be rebuilt (a lost base) is left as it is.
    """
    rows = list(SnapshotDelta.select(SnapshotDelta.digest, SnapshotDelta.base, SnapshotDelta.depth)
                .where(SnapshotDelta.repo == repo_id).tuples())
    links = [(digest, base) for digest, base, _ in rows]
    # A base with no delta row of its own (a lost one, or one this check cannot vouch for) is never leaned
    # on: the snapshot above it starts a chain, kept in full.
    unknown = {base for _, base in links if base} - {digest for digest, _ in links}
    fresh = depths(dict.fromkeys(unknown, KEYFRAME_DEPTH - 1), links)
    not_kept = {digest for (digest,) in Snapshot.select(Snapshot.digest)
                .where((Snapshot.repo == repo_id) & (Snapshot.record == NOT_KEPT)).tuples()}
    keyframes = [digest for digest, depth in fresh.items() if depth == 0 and digest in not_kept]
    rebuilt = records(repo_id, keyframes)
    if len(rebuilt) < len(keyframes):
        return 0
    dropped = sorted(digest for digest, depth in fresh.items() if depth > 0 and digest not in not_kept)
    moved: dict[int, list[str]] = {}
    for digest, _, depth in rows:
        if fresh[digest] != depth:
            moved.setdefault(fresh[digest], []).append(digest)
    database = SnapshotDelta._meta.database
    with database.atomic():
        for digest, record in rebuilt.items():
            Snapshot.update(record=record).where((Snapshot.repo == repo_id) & (Snapshot.digest == digest)).execute()
        for depth, digests in moved.items():
            for chunk in _chunks(digests):
                SnapshotDelta.update(depth=depth).where(
                    (SnapshotDelta.repo == repo_id) & SnapshotDelta.digest.in_(chunk)).execute()
        for chunk in _chunks(dropped):
            Snapshot.update(record=NOT_KEPT).where((Snapshot.repo == repo_id) & Snapshot.digest.in_(chunk)).execute()
    return len(dropped)


def compact_all() -> int:
    """``compact`` every repo → records no longer kept in full."""
    return sum(compact(repo_id) for (repo_id,) in Repo.select(Repo.repo_id).order_by(Repo.repo_id).tuples())


def _chunks(digests: list[str]) -> Iterable[list[str]]:
    """``digests`` in lists that fit one statement beside two more parameters (the repo id, twice)."""
    step = bulk.MAX_PARAMS - 2
    for start in range(0, len(digests), step):
        yield digests[start:start + step]
