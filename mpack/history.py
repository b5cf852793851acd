"""Walks over a repository's commit graph, one batched query per BFS level.

Every commit row carries its generation (1 + the highest parent generation),
so walks that only care about commits newer than some point stop there: the
fast-forward check and the "have" side of a delta cost work proportional to
what changed, not to the history.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from mpack.models import Commit, Repo

BATCH = 500  # ids per IN (...) query: well under SQLite's variable limit


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), BATCH):
        yield ids[start:start + BATCH]


def load_commits(repo: Repo, digests: Iterable[str], *, min_generation: int = 0) -> dict[str, Commit]:
    """Commit rows of ``repo`` by digest (unknown digests are absent from the result)."""
    wanted = sorted(set(digests))
    found: dict[str, Commit] = {}
    for chunk in _chunks(wanted):
        query = Commit.select().where((Commit.repo == repo) & Commit.digest.in_(chunk))
        if min_generation:
            query = query.where(Commit.generation >= min_generation)
        found.update((row.digest, row) for row in query)
    return found


def _walk(repo: Repo, starts: Iterable[str], *, stop: set[str] = frozenset(),
          min_generation: int = 0) -> Iterator[Commit]:
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


def walk_commit_delta(repo: Repo, wants: Iterable[str], haves: Iterable[str]) -> dict[str, Commit]:
    """Commits reachable from ``wants`` and not from ``haves`` (digests; unknown haves ignored).

    First the want side is walked, stopping at haves; then the have side is
    walked only down to the oldest generation found, and what it reaches is
    removed. When the client names its heads (or all its commits), both walks
    are proportional to the delta.
    """
    have_set = set(haves)
    found = {row.digest: row for row in _walk(repo, wants, stop=have_set)}
    if not found or not have_set:
        return found
    floor = min(row.generation for row in found.values())
    for row in _walk(repo, have_set, min_generation=floor):
        found.pop(row.digest, None)
    return found
