"""The in-process job pool: a few daemon threads that claim and run jobs.

Every gunicorn worker runs one pool (started after the fork). Threads in all
processes claim from the same table (``mpack.jobs.claim`` is atomic), so any
number of pools may run side by side. A thread that finds no work waits on an
event for ``poll_seconds``: ``wake()`` (called by ``jobs.enqueue`` in this
process) ends the wait at once; work enqueued by other processes is found by
polling. A running job's lease is renewed every third of the lease; if the
process dies the lease expires and another worker takes the job over.

The loop survives its jobs: a handler's exception is logged and recorded on
the job (retry with backoff, or failed after ``max_attempts``); an unknown job
type fails permanently on its first attempt. ``stop()`` drains: running jobs
finish, unclaimed jobs stay pending for the next start.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Self

from mpack.format.errors import MuseError
from mpack.hub import db as dbmod
from mpack.hub import jobs
from mpack.hub.db import discard_after
from mpack.hub.errors import DatabaseFull
from mpack.hub.jobs import JobRegistry, PermanentJobError, UnknownJobType
from mpack.hub.models import BackgroundJob

if TYPE_CHECKING:
    from mpack.hub.services import Hub


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobPool:
    """``threads`` workers sharing ``worker_id`` as a prefix (each adds ``/<n>``)."""

    def __init__(self, hub: Hub, *, threads: int, registry: JobRegistry,
                 worker_id: str | None = None, poll_seconds: float | None = None,
                 lease_seconds: float | None = None) -> None:
        self.hub = hub
        self.threads = threads
        self.registry = registry
        self.worker_id = worker_id or default_worker_id()
        self.poll_seconds = hub.settings.job_poll_seconds if poll_seconds is None else poll_seconds
        self.lease_seconds = hub.settings.job_lease_seconds if lease_seconds is None else lease_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle_lock = threading.Lock()
        self._idle = 0
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.threads):
            thread = threading.Thread(target=self._loop, args=(f"{self.worker_id}/{n}",),
                                      name=f"mpack-jobs-{n}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def wake(self) -> None:
        """Make idle threads look for work now (new work was enqueued in this process)."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def idle_threads(self) -> int:
        """How many threads are waiting for work."""
        with self._idle_lock:
            return self._idle

    def stop(self, timeout: float = 30.0) -> bool:
        """Let running jobs finish, claim no more; True when every thread exited in time."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _loop(self, worker_id: str) -> None:
        try:
            while not self._stop.is_set():
                self._wake.clear()
                if not self._run_one(worker_id):
                    self._wait_for_work()
        finally:
            _close_connection(self.hub)

    def _run_one(self, worker_id: str) -> bool:
        try:
            self.hub.db.connect(reuse_if_open=True)  # this thread's own connection, kept between jobs
            return run_one(self.hub, self.registry, worker_id, self.lease_seconds)
        except Exception as exc:  # the database itself failed (locked, gone): wait, try again (a fresh connection)
            self.hub.log.exception("job pool: claiming or recording a job failed", extra={"worker_id": worker_id})
            discard_after(self.hub.db, exc)
            return False

    def _wait_for_work(self) -> None:
        with self._idle_lock:
            self._idle += 1
        try:
            self._wake.wait(self.poll_seconds)
        finally:
            with self._idle_lock:
                self._idle -= 1


def run_one(hub: Hub, registry: JobRegistry, worker_id: str, lease_seconds: float) -> bool:
    """Claim one ready job and run it to its end; False when no job was ready."""
    job = jobs.claim(hub, worker_id, lease_seconds)
    if job is None:
        return False
    run_claimed(hub, registry, job, worker_id, lease_seconds)
    return True


def run_until_idle(hub: Hub, registry: JobRegistry, worker_id: str, *, lease_seconds: float | None = None) -> int:
    """Run ready jobs in the calling thread until none is ready; returns how many ran."""
    lease = hub.settings.job_lease_seconds if lease_seconds is None else lease_seconds
    count = 0
    while run_one(hub, registry, worker_id, lease):
        count += 1
    return count


def _error_code(exc: Exception) -> str | None:
    if isinstance(exc, MuseError):
        return exc.code
    return DatabaseFull.code if dbmod.is_disk_full(exc) else None


def run_claimed(hub: Hub, registry: JobRegistry, job: BackgroundJob, worker_id: str, lease_seconds: float) -> None:
    """Run a job this worker holds and record how it ended."""
    if job.attempt > job.max_attempts:
        # Claimed again after its last attempt's worker died without recording anything.
        error = f"gave up: attempt {job.attempt} exceeds max_attempts {job.max_attempts} (leases expired)"
        jobs.fail(hub, job.job_id, worker_id, error, permanent=True)
        return
    try:
        handler = registry.handler_for(job.job_type)
    except UnknownJobType as exc:
        hub.metrics.job_ran(job.job_type, "error", 0.0)
        hub.log.error("job failed: %s", exc.detail, extra=_job_fields(job))
        jobs.fail(hub, job.job_id, worker_id, exc.detail, permanent=True)
        return
    started = time.perf_counter()
    try:
        with Heartbeat(hub, job.job_id, worker_id, lease_seconds):
            result = handler(hub, job.job_id)
    except Exception as exc:  # the loop survives its jobs; the failure is recorded on the job
        hub.metrics.job_ran(job.job_type, "error", time.perf_counter() - started)
        hub.log.exception("job failed", extra=_job_fields(job))
        jobs.fail(hub, job.job_id, worker_id, f"{type(exc).__name__}: {exc}",
                  permanent=isinstance(exc, PermanentJobError), code=_error_code(exc))
        return
    if jobs.complete(hub, job.job_id, worker_id, result or {}):
        hub.metrics.job_ran(job.job_type, "done", time.perf_counter() - started)
    else:
        hub.metrics.job_ran(job.job_type, "lost", time.perf_counter() - started)
        hub.log.warning("job finished after its lease was lost; result discarded", extra=_job_fields(job))


def _job_fields(job: BackgroundJob) -> dict:
    return {"job_id": job.job_id, "job_type": job.job_type, "attempt": job.attempt}


def _close_connection(hub: Hub) -> None:
    if not hub.db.is_closed():
        hub.db.close()


class Heartbeat:
    """While open, renews a job's lease every third of the lease from a helper thread.

    The helper connects to the database only when it first renews, so short
    jobs cost no connection. If the lease was lost the helper stops renewing;
    the job's result will then be discarded by ``jobs.complete``.
    """

    def __init__(self, hub: Hub, job_id: str, worker_id: str, lease_seconds: float) -> None:
        self.hub, self.job_id, self.worker_id, self.lease_seconds = hub, job_id, worker_id, lease_seconds
        self.lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mpack-heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while not self._done.wait(self.lease_seconds / 3):
                if not self._renew():
                    return
        finally:
            _close_connection(self.hub)

    def _renew(self) -> bool:
        try:
            renewed = jobs.renew(self.hub, self.job_id, self.worker_id, self.lease_seconds)
        except Exception as exc:  # a busy or restarted database: the next beat tries again before the lease ends
            self.hub.log.exception("job heartbeat failed", extra={"job_id": self.job_id})
            discard_after(self.hub.db, exc)
            return True
        if not renewed:
            self.lost = True
            self.hub.log.warning("job lease lost to another worker", extra={"job_id": self.job_id})
        return renewed
