"""The canonical order of commits in a pack: parents first, ties by ``commit_id``."""
from __future__ import annotations

import heapq


def canonical_order_commits(commits: list[dict]) -> list[dict]:
    """Order commits parents first, ties broken by ``commit_id``.

    Parents (``parent_commit_id``, ``parent2_commit_id``) not in ``commits``
    are ignored. The result depends only on the set of commits, not on the
    order given (Kahn's algorithm with a heap; no recursion).

    Raises:
        ValueError: A commit id appears twice, or the parent links form a cycle.
    """
    by_id: dict[str, dict] = {}
    for commit in commits:
        if commit["commit_id"] in by_id:
            raise ValueError(f"commit {commit['commit_id']} appears twice")
        by_id[commit["commit_id"]] = commit
    children: dict[str, list[str]] = {commit_id: [] for commit_id in by_id}
    waiting: dict[str, int] = {}
    for commit_id, commit in by_id.items():
        parents = {commit.get("parent_commit_id"), commit.get("parent2_commit_id")} & by_id.keys()
        waiting[commit_id] = len(parents)
        for parent in parents:
            children[parent].append(commit_id)
    ready = [commit_id for commit_id, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        commit_id = heapq.heappop(ready)
        ordered.append(by_id[commit_id])
        for child in children[commit_id]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, child)
    if len(ordered) != len(by_id):
        raise ValueError("commit parents form a cycle")
    return ordered
