"""Walks over a repository's commit graph, one batched query per BFS level.

Every commit row carries its generation (1 + the highest parent generation),
so walks that only care about commits newer than some point stop there: the
fast-forward check and the "have" side of a delta cost work proportional to
what changed, not to the history.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from mpack.format.order import canonical_order_commits
from mpack.hub import bulk
from mpack.hub.models import Commit, Repo

BATCH = 500  # ids per IN (...) query: well under SQLite's variable limit
RECORD_BATCH = 200  # records per query when streaming them in order
# Walks load the graph, not the records: memory stays small however long the history.
GRAPH = (Commit.digest, Commit.commit_id, Commit.parents, Commit.snapshot, Commit.generation)


class CommitNode(NamedTuple):
    """A commit's place in the graph (one small tuple; peewee's namedtuples() makes a class per query)."""

    digest: str
    commit_id: str
    parents: list[str]
    snapshot: str
    generation: int



def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), BATCH):
        yield ids[start:start + BATCH]


def load_commits(repo: Repo, digests: Iterable[str], *, min_generation: int = 0) -> dict[str, CommitNode]:
    """Commit rows of ``repo`` by digest (unknown digests are absent from the result)."""
    wanted = sorted(set(digests))
    found: dict[str, CommitNode] = {}
    for chunk in _chunks(wanted):
        query = Commit.select(*GRAPH).where((Commit.repo == repo) & Commit.digest.in_(chunk))
        if min_generation:
            query = query.where(Commit.generation >= min_generation)
        found.update((row[0], CommitNode(*row)) for row in query.tuples())
    return found


def _walk(repo: Repo, starts: Iterable[str], *, stop: set[str] = frozenset(),
          min_generation: int = 0) -> Iterator[CommitNode]:
    """Commits reachable from ``starts`` (BFS levels), not entering ``stop``."""
    seen: set[str] = set()
    frontier = set(starts) - stop
    while frontier:
        rows = load_commits(repo, frontier, min_generation=min_generation)
        seen |= frontier
        frontier = set()
        for row in rows.values():
            yield row
            frontier.update(p for p in row.parents if p not in seen and p not in stop)


def is_ancestor(repo: Repo, ancestor: str, descendant: str) -> bool:
    """True when commit ``ancestor`` is reachable from ``descendant`` (digests)."""
    if ancestor == descendant:
        return True
    base = load_commits(repo, [ancestor]).get(ancestor)
    if base is None:
        return False
    return any(row.digest == ancestor for row in _walk(repo, [descendant], min_generation=base.generation))


def walk_commit_delta(repo: Repo, wants: Iterable[str], haves: Iterable[str]) -> dict[str, CommitNode]:
    """Commits reachable from ``wants`` and not from ``haves`` (digests; unknown haves ignored).

    First the want side is walked, stopping at haves; then the have side is
    walked only down to the oldest generation found, and what it reaches is
    removed. When the client names its heads (or all its commits), both walks
    are proportional to the delta.
    """
    have_set = set(haves)
    if not have_set:
        return reachable(repo, wants)
    found = {row.digest: row for row in _walk(repo, wants, stop=have_set)}
    if not found or not have_set:
        return found
    floor = min(row.generation for row in found.values())
    for row in _walk(repo, have_set, min_generation=floor):
        found.pop(row.digest, None)
    return found


def reachable(repo: Repo, wants: Iterable[str]) -> dict[str, CommitNode]:
    """Every commit reachable from ``wants``, in one query over the graph, newest generation first.

    A parent's generation is below its child's, so by the time the scan meets a
    commit, every child that could name it has been seen: one pass, no
    per-level queries (a clone of a linear history would need one per commit).
    """
    heads = load_commits(repo, wants)
    if not heads:
        return {}
    needed = set(heads)
    found: dict[str, CommitNode] = {}
    top = max(node.generation for node in heads.values())
    # Plain SQL, parents decoded only for the commits kept: the scan passes every row below the top.
    query = (Commit.select(*GRAPH).where((Commit.repo == repo) & (Commit.generation <= top))
             .order_by(Commit.generation.desc()))
    sql, params = query.sql()
    for digest, commit_id, parents, snapshot, generation in Commit._meta.database.execute_sql(sql, params):
        if digest in needed:
            node = found[digest] = CommitNode(digest, commit_id, json.loads(parents), snapshot, generation)
            needed.discard(digest)
            needed.update(node.parents)
            if not needed:
                break
    return found


def topological(commits: dict[str, CommitNode]) -> list[str]:
    """Digests of ``commits`` parents first, ties by digest: the pack's deterministic order."""
    graph = [{"commit_id": d, "parent_commit_id": (c.parents + [None])[0],
              "parent2_commit_id": (c.parents + [None, None])[1]} for d, c in commits.items()]
    return [node["commit_id"] for node in canonical_order_commits(graph)]


def iter_records(repo: Repo, digests: list[str]) -> Iterator[dict]:
    """The CommitDicts of ``digests``, in that order, a batch at a time (plain SQL: ``bulk.rows_by_digest``)."""
    for start in range(0, len(digests), RECORD_BATCH):
        chunk = digests[start:start + RECORD_BATCH]
        rows = dict(bulk.rows_by_digest(Commit, repo.repo_id, chunk, ("digest", "record")))
        for digest in chunk:
            yield json.loads(rows[digest])
