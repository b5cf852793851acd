"""The background-job table: enqueue, claim, lease, retry, finish (no threads here).

Guarantees:

* At most one *pending* job per (repo, job type): enqueueing more work for a
  repo that already has one merges the payloads (``merge_payloads``), so a
  burst of pushes costs one job. The partial unique index
  ``background_job_one_pending`` enforces it; a lost race is retried as a merge.
  The pending row is read ``FOR UPDATE`` on PostgreSQL before its payload is
  rewritten, so concurrent enqueuers (any node) merge one after the other
  instead of overwriting each other's additions.
* A claim is one conditional ``UPDATE … WHERE job_id = (SELECT … LIMIT 1)
  RETURNING *`` that also bumps ``attempt``: two workers, in any process, never
  claim the same job while its lease is live. PostgreSQL adds
  ``FOR UPDATE SKIP LOCKED`` so claimers do not queue behind each other.
* A claim holds a lease until ``locked_until``; the owner renews it while it
  works. A job whose lease expired (its worker died) is claimed again.
* Every change a worker makes to a job it claimed is conditional on still
  owning it (``locked_by`` and ``status='running'``): a worker that lost its
  lease cannot overwrite the new owner's state. Those calls return whether
  they applied.
* A failure goes back to ``pending`` after an exponential backoff with jitter
  until ``max_attempts``; then the job is ``failed`` and keeps ``last_error``.

All times are epoch seconds from ``hub.now()``, so tests drive them with an
injected clock.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import peewee as pw

from mpack.format.errors import MuseError
from mpack.hub.db import for_update
from mpack.hub.errors import Conflict, NotFound
from mpack.hub.models import BackgroundJob

if TYPE_CHECKING:
    from mpack.hub.services import Hub

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATUSES = (PENDING, RUNNING, DONE, FAILED)

BACKOFF_BASE = 2.0
BACKOFF_CAP = 600.0
BACKOFF_JITTER = 0.25
# A write that lost a uniqueness race is retried from the start; a few rounds
# are plenty because each lost race means someone else's row now exists.
WRITE_ATTEMPTS = 5

Handler = Callable[["Hub", str], dict]


class UnknownJobType(MuseError):
    """No handler is registered for a job's type: the job fails permanently."""

    code = "unknown_job_type"

    def __init__(self, job_type: str) -> None:
        super().__init__(f"no handler for job type {job_type}")
        self.job_type = job_type


class PermanentJobError(MuseError):
    """Raised by a handler when retrying cannot help (bad payload, full disk)."""

    code = "permanent_job_error"


class JobRegistry:
    """Maps a job type to the function that runs it: ``fn(hub, job_id) -> dict``."""

    def __init__(self, handlers: dict[str, Handler] | None = None) -> None:
        self._handlers: dict[str, Handler] = dict(handlers or {})

    def register(self, job_type: str, fn: Handler) -> Handler:
        self._handlers[job_type] = fn
        return fn

    def handler_for(self, job_type: str) -> Handler:
        try:
            return self._handlers[job_type]
        except KeyError:
            raise UnknownJobType(job_type) from None

    def job_types(self) -> list[str]:
        return sorted(self._handlers)


# -- ids and payloads ---------------------------------------------------------------

def compute_job_id(repo_id: str | None, job_type: str, created_at_iso: str) -> str:
    """sha256 hex of repo id, job type and creation time (ISO 8601), NUL-separated."""
    key = "\0".join((repo_id or "", job_type, created_at_iso))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def merge_payloads(old: dict, new: dict) -> dict:
    """``old`` updated by ``new``: lists are unioned (old order first), dicts merged deeply."""
    merged = dict(old)
    for key, value in new.items():
        prior = merged.get(key)
        if isinstance(prior, list) and isinstance(value, list):
            merged[key] = _union(prior, value)
        elif isinstance(prior, dict) and isinstance(value, dict):
            merged[key] = merge_payloads(prior, value)
        else:
            merged[key] = value
    return merged


def _union(first: list, second: list) -> list:
    out: list = []
    for item in (*first, *second):
        if item not in out:  # items may be unhashable (dicts)
            out.append(item)
    return out


# -- enqueue ------------------------------------------------------------------------

def enqueue(hub: Hub, repo_id: str | None, job_type: str, payload: dict, *, run_after: float | None = None,
            merge: Callable[[dict, dict], dict] | None = None) -> str:
    """Add work for (repo, type): merged (by ``merge``, default ``merge_payloads``) into its pending job
    if there is one. Returns the job id."""
    job_id = _retry_integrity(hub, lambda: _enqueue_once(hub, repo_id, job_type, payload, run_after, merge))
    if hub.pool is not None:
        # Inside the caller's transaction (a push) the job is invisible until it commits: a thread
        # woken now would find nothing (PostgreSQL does not make it wait as SQLite's lock does) and
        # sleep a whole poll. Wake it when the job is there to claim.
        hub.db.after_commit(hub.pool.wake)
    return job_id


def _retry_integrity(hub: Hub, write: Callable[[], Any]) -> Any:
    """Run ``write`` in a transaction, again if a concurrent writer broke a unique index."""
    for _ in range(WRITE_ATTEMPTS - 1):
        try:
            with hub.db.atomic():
                return write()
        except pw.IntegrityError:
            continue
    with hub.db.atomic():
        return write()


def _enqueue_once(hub: Hub, repo_id: str | None, job_type: str, payload: dict, run_after: float | None,
                  merge: Callable[[dict, dict], dict] | None = None) -> str:
    merged_into = _merge_pending(hub, repo_id, job_type, payload, run_after, merge)
    return merged_into if merged_into is not None else _insert(hub, repo_id, job_type, payload, run_after)


def _pending_for(hub: Hub, repo_id: str | None, job_type: str) -> BackgroundJob | None:
    """The pending job for (repo, type), locked until the transaction ends (its payload is about to change)."""
    repo_match = BackgroundJob.repo.is_null() if repo_id is None else BackgroundJob.repo == repo_id
    query = BackgroundJob.select().where(repo_match, BackgroundJob.job_type == job_type, BackgroundJob.status == PENDING)
    return for_update(hub.db, query).first()


def _merge_pending(hub: Hub, repo_id: str | None, job_type: str, payload: dict, run_after: float | None,
                   merge: Callable[[dict, dict], dict] | None = None) -> str | None:
    job = _pending_for(hub, repo_id, job_type)
    if job is None:
        return None
    wanted = hub.now() if run_after is None else run_after
    (BackgroundJob.update(payload=(merge or merge_payloads)(job.payload or {}, payload), run_after=min(job.run_after, wanted))
     .where(BackgroundJob.job_id == job.job_id).execute())
    return job.job_id


def _insert(hub: Hub, repo_id: str | None, job_type: str, payload: dict, run_after: float | None) -> str:
    now = hub.now()
    created = datetime.fromtimestamp(now, UTC)
    job_id = compute_job_id(repo_id, job_type, created.isoformat())
    while BackgroundJob.select().where(BackgroundJob.job_id == job_id).exists():
        created += timedelta(microseconds=1)  # same (repo, type, instant): take the next one
        job_id = compute_job_id(repo_id, job_type, created.isoformat())
    BackgroundJob.insert(
        job_id=job_id, repo=repo_id, job_type=job_type, payload=payload, status=PENDING,
        created_at=now, run_after=now if run_after is None else run_after,
        max_attempts=hub.settings.job_max_attempts,
    ).execute()
    return job_id


# -- claim and lease ----------------------------------------------------------------

def _pending(model: type[BackgroundJob], now: float) -> pw.Expression:
    return (model.status == PENDING) & (model.run_after <= now)


def _abandoned(model: type[BackgroundJob], now: float) -> pw.Expression:
    return (model.status == RUNNING) & (model.locked_until < now)


@lru_cache(maxsize=4)
def _any_ready_sql(param: str) -> str:
    p = param
    return (f"SELECT 1 FROM background_job WHERE (status = {p} AND locked_until < {p}) "
            f"OR (status = {p} AND run_after <= {p}) LIMIT 1")


def any_ready(hub: Hub) -> bool:
    """Whether some job is ready to claim: one read, no write lock (what an idle poll costs)."""
    now = hub.now()
    return hub.db.execute_sql(_any_ready_sql(hub.db.param), (RUNNING, now, PENDING, now)).fetchone() is not None


def claim(hub: Hub, worker_id: str, lease_seconds: float) -> BackgroundJob | None:
    """Atomically take the next ready job: one whose lease expired (a dead worker's), else a due pending one.

    Each kind is its own single ``UPDATE … WHERE job_id = (SELECT … LIMIT 1) RETURNING``, so SQLite
    walks the (status, run_after) index instead of sorting every ready job on each claim. An idle
    hub's poll finds nothing ready with one plain SELECT first: every job thread of every worker
    polls, and the two ORM-built write transactions took SQLite's write lock each time and ~2.5 ms
    of a worker's time (py-spy: 4 % of an idle worker's core at a 0.2 s poll, ~0.5 % with the SELECT).
    """
    if not any_ready(hub):
        return None
    for ready in (_abandoned, _pending):
        job = _claim_one(hub, worker_id, lease_seconds, ready)
        if job is not None:
            return job
    return None


def _claim_one(hub: Hub, worker_id: str, lease_seconds: float, ready) -> BackgroundJob | None:
    now = hub.now()
    candidate = BackgroundJob.alias("candidate")
    pick = (candidate.select(candidate.job_id).where(ready(candidate, now))
            .order_by(candidate.status, candidate.run_after).limit(1))
    if isinstance(hub.db, pw.PostgresqlDatabase):
        pick = pick.for_update(skip_locked=True)
    query = (BackgroundJob
             .update(status=RUNNING, attempt=BackgroundJob.attempt + 1,
                     locked_by=worker_id, locked_until=now + lease_seconds)
             .where(BackgroundJob.job_id == pick, ready(BackgroundJob, now))
             .returning(BackgroundJob))
    with hub.db.atomic():
        rows = list(query.execute())
    return rows[0] if rows else None


def _update_owned(job_id: str, worker_id: str, **values: Any) -> bool:
    query = BackgroundJob.update(**values).where(
        BackgroundJob.job_id == job_id, BackgroundJob.locked_by == worker_id, BackgroundJob.status == RUNNING)
    return query.execute() == 1


def renew(hub: Hub, job_id: str, worker_id: str, lease_seconds: float) -> bool:
    """Extend the lease (heartbeat). False when the worker no longer owns the job."""
    return _update_owned(job_id, worker_id, locked_until=hub.now() + lease_seconds)


def complete(hub: Hub, job_id: str, worker_id: str, result: dict) -> bool:
    """Mark the job done with its handler's result, if the worker still owns it."""
    return _update_owned(job_id, worker_id, status=DONE, result=result, finished_at=hub.now(), locked_until=None)


# -- failure and retry --------------------------------------------------------------

def backoff_delay(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before retry number ``attempt`` (1-based): 2, 4, 8 … ±25 %, never over 600."""
    raw = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(max(attempt, 1) - 1, 32))
    return min(BACKOFF_CAP, raw * (1 + BACKOFF_JITTER * (2 * rng() - 1)))


def fail(hub: Hub, job_id: str, worker_id: str, error: str, *, permanent: bool = False,
         rng: Callable[[], float] = random.random, code: str | None = None) -> bool:
    """Record a failed attempt: retry later, or give up. False when the worker lost the job.

    ``code`` (the error's stable code, e.g. ``storage_full``) is kept on a job
    that gives up, as ``result["error_code"]``, so work that failed for lack of
    space can be found and retried once space is back.
    """
    return _retry_integrity(hub, lambda: _fail(hub, job_id, worker_id, error, permanent, rng, code))


def _fail(hub: Hub, job_id: str, worker_id: str, error: str, permanent: bool, rng: Callable[[], float],
          code: str | None = None) -> bool:
    job = BackgroundJob.get_or_none(BackgroundJob.job_id == job_id, BackgroundJob.locked_by == worker_id,
                                    BackgroundJob.status == RUNNING)
    if job is None:
        return False
    now = hub.now()
    if permanent or job.attempt >= job.max_attempts:
        return _update_owned(job_id, worker_id, status=FAILED, last_error=error, finished_at=now, locked_until=None,
                             result={"error_code": code} if code else None)
    newer = _pending_for(hub, job.repo_id, job.job_type)
    if newer is not None:
        # New work for the same (repo, type) is already waiting: fold this
        # payload into it rather than keep two pending jobs.
        newer_payload = merge_payloads(job.payload or {}, newer.payload or {})
        BackgroundJob.update(payload=newer_payload).where(BackgroundJob.job_id == newer.job_id).execute()
        return _update_owned(job_id, worker_id, status=DONE, last_error=error, finished_at=now, locked_until=None,
                             result={"superseded_by": newer.job_id})
    return _update_owned(job_id, worker_id, status=PENDING, last_error=error, locked_by=None, locked_until=None,
                         run_after=now + backoff_delay(job.attempt, rng))


class JobNotFound(NotFound):
    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


class JobNotFailed(Conflict):
    """Only a failed job can be retried (a pending or running one is on its way)."""

    code = "job_not_failed"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id} is {status}, not failed")
        self.job_id, self.status = job_id, status


def retry(hub: Hub, job_id: str) -> str:
    """Give a failed job a fresh set of attempts, due now → the id of the pending job that will run it.

    If (repo, type) already has a pending job, the payload is merged into it and
    the failed one is closed as superseded (one pending job per repo and type).
    """
    pending_id = _retry_integrity(hub, lambda: _retry(hub, job_id))
    if hub.pool is not None:
        hub.pool.wake()
    return pending_id


def _retry(hub: Hub, job_id: str) -> str:
    # Locked (PostgreSQL): a second retry of the same job, from any node, waits and then finds it pending.
    job = for_update(hub.db, BackgroundJob.select().where(BackgroundJob.job_id == job_id)).first()
    if job is None:
        raise JobNotFound(job_id)
    if job.status != FAILED:
        raise JobNotFailed(job_id, job.status)
    now = hub.now()
    newer = _pending_for(hub, job.repo_id, job.job_type)
    if newer is not None:
        BackgroundJob.update(payload=merge_payloads(job.payload or {}, newer.payload or {}),
                             run_after=now).where(BackgroundJob.job_id == newer.job_id).execute()
        BackgroundJob.update(status=DONE, result={"superseded_by": newer.job_id}).where(
            BackgroundJob.job_id == job_id).execute()
        return newer.job_id
    BackgroundJob.update(status=PENDING, attempt=0, run_after=now, locked_by=None, locked_until=None,
                         finished_at=None).where((BackgroundJob.job_id == job_id) & (BackgroundJob.status == FAILED)).execute()
    return job_id


def failed_with(hub: Hub, job_type: str, codes: set[str], repo_id: str | None = None) -> list[BackgroundJob]:
    """Failed jobs of a type whose recorded error code is one of ``codes`` (one repo, or all)."""
    query = BackgroundJob.select().where(BackgroundJob.job_type == job_type, BackgroundJob.status == FAILED,
                                         BackgroundJob.result.is_null(False))
    if repo_id is not None:
        query = query.where(BackgroundJob.repo == repo_id)
    return [job for job in query if (job.result or {}).get("error_code") in codes]


def mark_requeued(job_id: str, new_job_id: str) -> bool:
    """A failed job whose work now lives in ``new_job_id``: done, superseded (it is not retried twice)."""
    return BackgroundJob.update(status=DONE, result={"requeued_as": new_job_id}).where(
        BackgroundJob.job_id == job_id, BackgroundJob.status == FAILED).execute() == 1
