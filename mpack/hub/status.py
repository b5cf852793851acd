"""What the admin status page shows: repositories, cache, jobs, disk and GC, as plain data.

Everything comes from SQL aggregates and the metric counters; nothing walks
the store, so the page stays cheap on a large hub.
"""
from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import peewee as pw

from mpack.hub import gc, job_reports, jobs, metrics
from mpack.hub.models import Branch, Commit, FetchMPackCache, Object, Repo

if TYPE_CHECKING:
    from mpack.hub.services import Hub

LIST_LIMIT = 50


def _per_repo(query) -> dict[str, tuple]:
    return {repo_id: rest for repo_id, *rest in query.tuples()}


def repositories(hub: Hub) -> list[dict]:
    """Every repository with its object count and bytes, commits, branches and cache usage."""
    objects = _per_repo(Object.select(Object.repo, pw.fn.COUNT(Object.digest), pw.fn.SUM(Object.size)).group_by(Object.repo))
    commits = _per_repo(Commit.select(Commit.repo, pw.fn.COUNT(Commit.digest)).group_by(Commit.repo))
    branches = _per_repo(Branch.select(Branch.repo, pw.fn.COUNT(Branch.id)).group_by(Branch.repo))
    packs = (FetchMPackCache.select(FetchMPackCache.repo, pw.fn.COUNT(FetchMPackCache.cache_id).alias("rows"),
                                    pw.fn.MAX(FetchMPackCache.size).alias("size"))
             .group_by(FetchMPackCache.repo, FetchMPackCache.mpack_id))
    cached = _per_repo(FetchMPackCache.select(packs.c.repo_id, pw.fn.SUM(packs.c.rows), pw.fn.SUM(packs.c.size))
                       .from_(packs).group_by(packs.c.repo_id))  # each pack once per repo
    rows = []
    for repo in Repo.select().order_by(Repo.owner, Repo.name):
        count, size = objects.get(repo.repo_id, (0, 0))
        cache_rows, cache_bytes = cached.get(repo.repo_id, (0, 0))
        rows.append({
            "name": f"{repo.owner}/{repo.name}", "visibility": repo.visibility, "objects": count,
            "object_bytes": int(size or 0), "commits": commits.get(repo.repo_id, (0,))[0],
            "branches": branches.get(repo.repo_id, (0,))[0],
            "cache_rows": int(cache_rows or 0), "cache_bytes": int(cache_bytes or 0),
        })
    return rows


def cache_rows(hub: Hub, limit: int = LIST_LIMIT) -> list[dict]:
    """The most recently used cache rows with their hits and expiry."""
    query = (FetchMPackCache.select(FetchMPackCache, Repo.owner, Repo.name).join(Repo)
             .order_by(FetchMPackCache.last_used_at.desc()).limit(limit))
    now = hub.now()
    return [{
        "repo": f"{row.repo.owner}/{row.repo.name}", "tip": row.tip_commit_id, "delta": bool(row.base),
        "mpack_id": row.mpack_id, "size": row.size, "commits": row.commit_count, "hits": row.hits,
        "expires_in": row.expires_at - now, "last_used_ago": now - row.last_used_at,
    } for row in query]


def hit_rate(hub: Hub) -> dict:
    """Fetches by result since the hub started (every worker), and the share answered from the cache."""
    counts = {result: int(n) for result, n in hub.metrics.totals("fetch_requests", "result").items()}
    served = sum(n for result, n in counts.items() if result != "error")
    return {"counts": counts, "rate": counts.get("hit", 0) / served if served else None}


def disk(hub: Hub) -> dict:
    usage = metrics.cache_usage(hub.now())
    fs = shutil.disk_usage(hub.settings.home)
    return {
        "blob_bytes": metrics.blob_bytes(), "cache_bytes": usage["fresh"]["bytes"],
        "expired_cache_bytes": usage["expired"]["bytes"], "cache_max_bytes": hub.settings.cache_max_bytes,
        "disk_free": fs.free, "disk_total": fs.total,
    }


def job_lists(hub: Hub) -> dict:
    return {"counts": job_reports.counts_by_status(hub), "pending": job_reports.oldest(hub, jobs.PENDING),
            "running": job_reports.oldest(hub, jobs.RUNNING), "failed": job_reports.oldest(hub, jobs.FAILED)}


def overview(hub: Hub) -> dict:
    """Everything the status page shows."""
    return {
        "now": hub.now(), "public_url": hub.settings.public_url, "repositories": repositories(hub),
        "cache": cache_rows(hub), "hit_rate": hit_rate(hub), "disk": disk(hub), "jobs": job_lists(hub),
        "gc_reports": gc.recent_reports(hub),
    }
