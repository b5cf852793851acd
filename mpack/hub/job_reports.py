"""Reading the background-job table for people: counts, lists, one job, and pruning finished jobs.

The queue's own operations (enqueue, claim, lease, retry, finish) are in
``mpack/hub/jobs.py``; this module only reads its rows for the admin page,
``GET /admin/jobs``, ``mpackhub jobs`` and the status page, and deletes
finished ones for GC.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import peewee as pw

from mpack.hub.jobs import DONE, FAILED, STATUSES
from mpack.hub.models import BackgroundJob

if TYPE_CHECKING:
    from mpack.hub.services import Hub


def oldest(hub: Hub, status: str, limit: int = 20) -> list[dict]:
    """Jobs in ``status``, oldest first (the admin page's queue and failure lists)."""
    query = (BackgroundJob.select().where(BackgroundJob.status == status)
             .order_by(BackgroundJob.created_at, BackgroundJob.job_id).limit(limit))
    return [describe(job) for job in query]


def prune_finished(hub: Hub, older_than: float, *, dry_run: bool = False) -> int:
    """Delete done and failed jobs that finished before ``older_than``; returns how many (would go)."""
    finished = (BackgroundJob.status.in_((DONE, FAILED))) & (BackgroundJob.finished_at < older_than)
    if dry_run:
        return BackgroundJob.select().where(finished).count()
    with hub.db.atomic():
        return BackgroundJob.delete().where(finished).execute()


def counts_by_status(hub: Hub) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    query = BackgroundJob.select(BackgroundJob.status, pw.fn.COUNT(BackgroundJob.job_id)).group_by(BackgroundJob.status)
    for status, count in query.tuples():
        counts[status] = count
    return counts


def get(hub: Hub, job_id: str) -> BackgroundJob | None:
    return BackgroundJob.get_or_none(BackgroundJob.job_id == job_id)


def overview(hub: Hub, limit: int = 50) -> dict:
    """``{"counts": {status: n}, "recent": [job, …]}`` for the admin endpoint and ``mpackhub jobs``."""
    return {"counts": counts_by_status(hub), "recent": recent(hub, limit)}


def recent(hub: Hub, limit: int = 50) -> list[dict]:
    """The newest jobs as JSON-ready dicts."""
    query = BackgroundJob.select().order_by(BackgroundJob.created_at.desc(), BackgroundJob.job_id).limit(limit)
    return [describe(job) for job in query]


def describe(job: BackgroundJob) -> dict:
    return {
        "job_id": job.job_id, "repo_id": job.repo_id, "job_type": job.job_type, "status": job.status,
        "payload": job.payload, "attempt": job.attempt, "max_attempts": job.max_attempts,
        "created_at": job.created_at, "run_after": job.run_after, "locked_by": job.locked_by,
        "locked_until": job.locked_until, "last_error": job.last_error, "result": job.result,
        "finished_at": job.finished_at,
    }
