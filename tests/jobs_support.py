"""Helpers for the job tests: a hub on a temp directory, a settable clock, and
the module-level targets that ``multiprocessing`` (spawn) runs in children."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mpack.hub import jobs
from mpack.hub.db import open_database
from mpack.hub.jobs import JobRegistry
from mpack.hub.migrations import migrate
from mpack.hub.models import Repo
from mpack.hub.pool import JobPool, run_until_idle
from mpack.hub.services import Hub
from mpack.hub.settings import Settings
from tests.database import database_url
from tests.factories import Clock

RECORD = "test.record"
BLOCK = "test.block"
EXECUTIONS = "executions.log"


FakeClock = Clock  # the hand-moved clock of tests/factories.py


def open_hub(home: Path | str, *, clock: Callable[[], float] = time.time, **overrides: object) -> Hub:
    """A hub on ``home/jobs.sqlite3`` (or its PostgreSQL database; schema migrated), with no store and no pool."""
    home = Path(home)
    database = open_database(database_url(home, sqlite_name="jobs.sqlite3"))
    migrate(database)
    return Hub(settings=Settings.for_home(home, **overrides), db=database, store=None, clock=clock)


@pytest.fixture
def clock() -> Clock:
    """The job tests' hand-moved clock (imported into their modules as a fixture)."""
    return FakeClock()


@pytest.fixture
def hub(tmp_path, clock):
    """A jobs-only hub (no store) on tmp_path."""
    hub = open_hub(tmp_path, clock=clock)
    yield hub
    hub.db.close()


def make_repos(hub: Hub, count: int) -> list[str]:
    repo_ids = [f"repo{n:04d}" for n in range(count)]
    now = hub.now()
    rows = [{"repo_id": r, "owner": "gabriel", "name": r, "visibility": "public", "created_at": now} for r in repo_ids]
    with hub.db.atomic():
        Repo.insert_many(rows).execute()
    return repo_ids


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; returns its last answer."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            return bool(predicate())
        pause.wait(interval)
    return True


def record_execution(hub: Hub, job_id: str) -> dict:
    """Handler: append "<job id> <pid>" to the executions log (one O_APPEND write)."""
    fd = os.open(hub.settings.home / EXECUTIONS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{job_id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return {"pid": os.getpid()}


def read_executions(home: Path) -> list[tuple[str, int]]:
    lines = (home / EXECUTIONS).read_text().splitlines()
    return [(job_id, int(pid)) for job_id, pid in (line.split() for line in lines)]


def pool_worker(home: str, stop, ready) -> None:
    """Child process: run a two-thread pool recording every job until ``stop`` is set."""
    hub = open_hub(home)
    registry = JobRegistry({RECORD: record_execution})
    pool = JobPool(hub, threads=2, registry=registry, poll_seconds=0.1)
    ready.wait(30)  # every child starts claiming at once
    pool.start()
    stop.wait(60)
    pool.stop(10)


def claim_and_block(home: str, started) -> None:
    """Child process: claim one job with a 2 s lease and block in its handler forever."""
    hub = open_hub(home, job_lease_seconds=2)

    def block(hub: Hub, job_id: str) -> dict:
        started.set()
        threading.Event().wait()
        return {}

    run_until_idle(hub, JobRegistry({BLOCK: block}), "doomed")


def enqueue_each(hub: Hub, repo_ids: list[str], job_type: str, clock: FakeClock | None = None) -> list[str]:
    """One job per repo, oldest first (``clock`` moves 1 ms between them)."""
    job_ids = []
    for n, repo_id in enumerate(repo_ids):
        if clock is not None:
            clock.advance(0.001)
        job_ids.append(jobs.enqueue(hub, repo_id, job_type, {"n": n}))
    return job_ids
