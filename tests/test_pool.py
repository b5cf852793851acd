"""The job pool: handlers run, failures are recorded, wake/stop/lease work across threads and processes."""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections import Counter

import pytest

from mpack.hub import job_reports, jobs
from mpack.hub.jobs import JobRegistry, PermanentJobError
from mpack.hub.models import BackgroundJob
from mpack.hub.pool import JobPool, run_one, run_until_idle
from tests import jobs_support
from tests.jobs_support import (  # noqa: F401 — clock and hub are fixtures
    FakeClock,
    clock,
    enqueue_each,
    hub,
    make_repos,
    open_hub,
    read_executions,
    wait_until,
)

NOOP = "test.noop"


@pytest.fixture
def live_hub(tmp_path):
    """A hub on the real clock, for threads and processes."""
    hub = open_hub(tmp_path)
    yield hub
    hub.stop_pool(5)
    hub.db.close()


@pytest.fixture
def repo_id(hub):
    return make_repos(hub, 1)[0]


def _job(job_id: str) -> BackgroundJob:
    return BackgroundJob.get_by_id(job_id)


def _status(job_id: str) -> str:
    return _job(job_id).status


class Gate:
    """A handler that reports when it starts and holds its job until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.ran: list[str] = []

    def __call__(self, hub, job_id: str) -> dict:
        self.ran.append(job_id)
        self.started.set()
        assert self.release.wait(10), "gate never released"
        return {"released": True}


# -- running jobs in the caller's thread ---------------------------------------------

def test_run_until_idle_runs_each_ready_job_and_records_its_result(hub, repo_id):
    job_id = jobs.enqueue(hub, repo_id, NOOP, {"tip_commit_ids": ["t"]})
    seen = []
    registry = JobRegistry({NOOP: lambda hub, job_id: seen.append(job_id) or {"tips_built": 1}})

    assert run_until_idle(hub, registry, "w1") == 1

    assert seen == [job_id]
    assert (_status(job_id), _job(job_id).result) == ("done", {"tips_built": 1})


def test_an_unknown_job_type_fails_permanently_on_the_first_attempt(hub, repo_id):
    job_id = jobs.enqueue(hub, repo_id, "no.such.type", {})

    assert run_until_idle(hub, JobRegistry(), "w1") == 1

    job = _job(job_id)
    assert (job.status, job.attempt) == ("failed", 1)
    assert job.last_error == "no handler for job type no.such.type"


def test_a_raising_handler_is_logged_and_retried_later(hub, clock, repo_id, caplog):
    job_id = jobs.enqueue(hub, repo_id, NOOP, {})

    def boom(hub, job_id):
        raise RuntimeError("disk hiccup")

    with caplog.at_level(logging.ERROR, logger="mpackhub"):
        assert run_until_idle(hub, JobRegistry({NOOP: boom}), "w1") == 1

    job = _job(job_id)
    assert (job.status, job.attempt, job.last_error) == ("pending", 1, "RuntimeError: disk hiccup")
    assert job.run_after > clock.now
    assert any(record.exc_info and "disk hiccup" in str(record.exc_info[1]) for record in caplog.records)


def test_a_permanent_job_error_is_not_retried(hub, repo_id):
    job_id = jobs.enqueue(hub, repo_id, NOOP, {})

    def refuse(hub, job_id):
        raise PermanentJobError("payload names no tips")

    run_until_idle(hub, JobRegistry({NOOP: refuse}), "w1")

    assert (_status(job_id), _job(job_id).last_error) == ("failed", "PermanentJobError: payload names no tips")


def test_a_job_reclaimed_past_max_attempts_fails_without_running(hub, clock, repo_id):
    job_id = jobs.enqueue(hub, repo_id, NOOP, {})
    for _ in range(hub.settings.job_max_attempts):
        jobs.claim(hub, "crashing", 10)  # the worker dies: nothing is recorded
        clock.advance(11)
    seen = []

    assert run_one(hub, JobRegistry({NOOP: lambda hub, job_id: seen.append(job_id) or {}}), "w1", 10) is True

    job = _job(job_id)
    assert seen == []
    assert (job.status, job.attempt) == ("failed", hub.settings.job_max_attempts + 1)
    assert "exceeds max_attempts" in job.last_error


# -- the pool's threads -------------------------------------------------------------

def test_wake_runs_an_enqueued_job_without_waiting_for_the_poll(live_hub):
    ran = threading.Event()
    registry = JobRegistry({NOOP: lambda hub, job_id: ran.set() or {}})
    live_hub.pool = JobPool(live_hub, threads=1, registry=registry, poll_seconds=600)
    live_hub.pool.start()
    assert wait_until(lambda: live_hub.pool.idle_threads() == 1, timeout=5)

    job_id = jobs.enqueue(live_hub, make_repos(live_hub, 1)[0], NOOP, {})

    assert ran.wait(5)
    assert wait_until(lambda: _status(job_id) == "done", timeout=5)


def test_a_job_enqueued_inside_the_callers_transaction_runs_once_it_commits(live_hub):
    ran = threading.Event()
    registry = JobRegistry({NOOP: lambda hub, job_id: ran.set() or {}})
    live_hub.pool = JobPool(live_hub, threads=1, registry=registry, poll_seconds=600)
    live_hub.pool.start()
    repo_id = make_repos(live_hub, 1)[0]
    assert wait_until(lambda: live_hub.pool.idle_threads() == 1, timeout=5)

    with live_hub.db.atomic():  # as a push does: the job commits with the push
        jobs.enqueue(live_hub, repo_id, NOOP, {})
        assert not ran.is_set()

    assert ran.wait(5)  # woken when the job committed, not after the 600 s poll


def test_stop_lets_the_running_job_finish_and_leaves_the_rest_pending(live_hub):
    gate = Gate()
    pool = JobPool(live_hub, threads=1, registry=JobRegistry({NOOP: gate}), poll_seconds=600)
    running, queued = enqueue_each(live_hub, make_repos(live_hub, 2), NOOP)
    pool.start()
    assert gate.started.wait(5)
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(pool.stop(10)))

    stopper.start()
    assert wait_until(lambda: pool.stopping, timeout=5)
    gate.release.set()
    stopper.join(10)

    assert stopped == [True]
    assert gate.ran == [running]
    assert (_status(running), _status(queued), _job(queued).attempt) == ("done", "pending", 0)


def test_each_thread_claims_under_its_own_worker_id(live_hub):
    gate = Gate()
    pool = JobPool(live_hub, threads=2, registry=JobRegistry({NOOP: gate}), worker_id="host:1:abcd", poll_seconds=0.05)
    job_ids = enqueue_each(live_hub, make_repos(live_hub, 2), NOOP)
    pool.start()
    try:
        assert wait_until(lambda: len(gate.ran) == 2, timeout=5)
        owners = {_job(job_id).locked_by for job_id in job_ids}
    finally:
        gate.release.set()
        pool.stop(5)

    assert len(owners) == 2
    assert all(owner.startswith("host:1:abcd/") for owner in owners)


def test_the_heartbeat_keeps_a_long_job_leased(live_hub):
    gate = Gate()
    pool = JobPool(live_hub, threads=1, registry=JobRegistry({NOOP: gate}), poll_seconds=600, lease_seconds=1.2)
    job_id = jobs.enqueue(live_hub, make_repos(live_hub, 1)[0], NOOP, {})
    pool.start()
    try:
        assert gate.started.wait(5)
        first_lease_end = _job(job_id).locked_until

        def outlived_first_lease() -> bool:
            now = live_hub.now()
            return now > first_lease_end + 0.2 and _job(job_id).locked_until > now

        assert wait_until(outlived_first_lease, timeout=5)
        assert jobs.claim(live_hub, "thief", 60) is None
    finally:
        gate.release.set()
        pool.stop(5)

    job = _job(job_id)
    assert (job.status, job.attempt) == ("done", 1)


# -- several processes ----------------------------------------------------------------

def test_three_processes_run_200_jobs_each_exactly_once(live_hub, tmp_path):
    job_ids = enqueue_each(live_hub, make_repos(live_hub, 200), jobs_support.RECORD)
    live_hub.db.close()
    spawn = multiprocessing.get_context("spawn")
    stop, ready = spawn.Event(), spawn.Barrier(3)
    workers = [spawn.Process(target=jobs_support.pool_worker, args=(str(tmp_path), stop, ready)) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        assert wait_until(lambda: job_reports.counts_by_status(live_hub)["done"] == 200, timeout=25, interval=0.1)
    finally:
        stop.set()
        for worker in workers:
            worker.join(15)
            if worker.is_alive():
                worker.kill()

    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    executions = read_executions(tmp_path)
    assert Counter(job_id for job_id, _ in executions) == Counter(job_ids)  # each job exactly once
    assert len({pid for _, pid in executions}) >= 2


@pytest.fixture
def short_lease_hub(tmp_path):
    hub = open_hub(tmp_path, job_lease_seconds=2)
    yield hub
    hub.db.close()


def test_the_job_of_a_killed_worker_is_finished_by_another_after_its_lease(short_lease_hub, tmp_path):
    hub = short_lease_hub
    job_id = jobs.enqueue(hub, make_repos(hub, 1)[0], jobs_support.BLOCK, {})
    spawn = multiprocessing.get_context("spawn")
    started = spawn.Event()
    doomed = spawn.Process(target=jobs_support.claim_and_block, args=(str(tmp_path), started))
    doomed.start()
    try:
        assert started.wait(15)
    finally:
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.join(5)
    assert doomed.exitcode == -signal.SIGKILL
    assert (_status(job_id), _job(job_id).locked_by) == ("running", "doomed")
    registry = JobRegistry({jobs_support.BLOCK: lambda hub, job_id: {"rescued": True}})

    assert wait_until(lambda: run_one(hub, registry, "rescuer", 2), timeout=10, interval=0.1)

    job = _job(job_id)
    assert (job.status, job.attempt, job.locked_by, job.result) == ("done", 2, "rescuer", {"rescued": True})
