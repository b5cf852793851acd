"""The job table: enqueue merges, claims are atomic, leases expire, failures back off."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from mpack.hub import job_reports, jobs
from mpack.hub.jobs import compute_job_id, merge_payloads
from mpack.hub.models import BackgroundJob
from tests.database import only_sqlite
from tests.jobs_support import clock, enqueue_each, hub, make_repos  # noqa: F401 — clock and hub are fixtures

PREBUILD = "fetch.mpack.prebuild"


@pytest.fixture
def repo_id(hub):
    return make_repos(hub, 1)[0]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _job(job_id: str) -> BackgroundJob:
    return BackgroundJob.get_by_id(job_id)


# -- ids and payloads ---------------------------------------------------------------

def test_compute_job_id_is_deterministic():
    first = compute_job_id("r1", PREBUILD, "2025-01-01T00:00:00+00:00")
    assert first == compute_job_id("r1", PREBUILD, "2025-01-01T00:00:00+00:00")
    assert len(first) == 64 and int(first, 16) >= 0
    assert first != compute_job_id("r2", PREBUILD, "2025-01-01T00:00:00+00:00")
    assert first != compute_job_id("r1", "gc", "2025-01-01T00:00:00+00:00")
    assert first != compute_job_id("r1", PREBUILD, "2025-01-01T00:00:00.000001+00:00")
    assert compute_job_id(None, "gc", "x") == compute_job_id(None, "gc", "x")


def test_merge_payloads_unions_lists_merges_dicts_and_replaces_the_rest():
    old = {"tips": ["a", "b"], "opts": {"deep": {"x": 1}, "keep": True}, "reason": "push"}
    new = {"tips": ["b", "c", "c"], "opts": {"deep": {"y": 2}}, "reason": "force", "extra": 1}
    assert merge_payloads(old, new) == {
        "tips": ["a", "b", "c"],
        "opts": {"deep": {"x": 1, "y": 2}, "keep": True},
        "reason": "force",
        "extra": 1,
    }
    assert old["tips"] == ["a", "b"]  # inputs are not modified


# -- enqueue ------------------------------------------------------------------------

def test_enqueue_creates_a_pending_job(hub, clock, repo_id):
    job_id = jobs.enqueue(hub, repo_id, PREBUILD, {"tip_commit_ids": ["t1"]})

    job = _job(job_id)
    assert job_id == compute_job_id(repo_id, PREBUILD, _iso(clock.now))
    assert (job.status, job.attempt, job.repo_id, job.job_type) == ("pending", 0, repo_id, PREBUILD)
    assert job.payload == {"tip_commit_ids": ["t1"]}
    assert job.created_at == job.run_after == clock.now
    assert job.max_attempts == hub.settings.job_max_attempts


def test_burst_of_enqueues_for_one_repo_leaves_one_pending_job_with_every_tip(hub, clock, repo_id):
    tips = [f"tip-{n:02d}" for n in range(20)]
    returned: list[str] = []
    start = threading.Barrier(4)

    def push(batch: list[str]) -> None:
        start.wait()
        try:
            for tip in batch:
                clock.advance(0.001)
                returned.append(jobs.enqueue(hub, repo_id, PREBUILD, {"tip_commit_ids": [tip]}))
        finally:
            hub.db.close()

    threads = [threading.Thread(target=push, args=(tips[n::4],)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    pending = list(BackgroundJob.select().where(BackgroundJob.status == "pending"))
    assert len(pending) == 1
    assert sorted(pending[0].payload["tip_commit_ids"]) == tips
    assert set(returned) == {pending[0].job_id} and len(returned) == 20


def test_enqueue_while_the_job_runs_creates_a_new_pending_job(hub, repo_id):
    running = jobs.enqueue(hub, repo_id, PREBUILD, {"tip_commit_ids": ["t1"]})
    jobs.claim(hub, "w1", 60)

    queued = jobs.enqueue(hub, repo_id, PREBUILD, {"tip_commit_ids": ["t2"]})

    assert queued != running
    assert _job(running).payload == {"tip_commit_ids": ["t1"]}
    assert (_job(queued).status, _job(queued).payload) == ("pending", {"tip_commit_ids": ["t2"]})


def test_enqueue_at_the_same_instant_takes_the_next_microsecond(hub, clock, repo_id):
    first = jobs.enqueue(hub, repo_id, PREBUILD, {})
    jobs.claim(hub, "w1", 60)  # no longer pending: the next enqueue inserts

    second = jobs.enqueue(hub, repo_id, PREBUILD, {})

    next_instant = (datetime.fromtimestamp(clock.now, UTC) + timedelta(microseconds=1)).isoformat()
    assert first == compute_job_id(repo_id, PREBUILD, _iso(clock.now))
    assert second == compute_job_id(repo_id, PREBUILD, next_instant)


def test_enqueue_brings_a_delayed_pending_job_forward(hub, clock, repo_id):
    job_id = jobs.enqueue(hub, repo_id, PREBUILD, {}, run_after=clock.now + 300)

    assert jobs.enqueue(hub, repo_id, PREBUILD, {"tip_commit_ids": ["t"]}) == job_id

    assert _job(job_id).run_after == clock.now


# -- claim --------------------------------------------------------------------------

def test_claim_is_atomic_across_threads(hub):
    job_ids = enqueue_each(hub, make_repos(hub, 100), "test.noop")
    claimed: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        try:
            while (job := jobs.claim(hub, f"w{n}", 60)) is not None:
                claimed[n].append(job.job_id)
        finally:
            hub.db.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)

    everything = [job_id for batch in claimed for job_id in batch]
    assert sorted(everything) == sorted(job_ids)  # each job once, none lost
    assert all(_job(j).attempt == 1 for j in job_ids)


@only_sqlite
def test_an_idle_poll_finds_nothing_without_taking_the_write_lock(hub, clock, repo_id):
    jobs.enqueue(hub, repo_id, PREBUILD, {}, run_after=clock.now + 10)  # not due: nothing ready
    writer = sqlite3.connect(hub.db.database, timeout=0)
    writer.execute("BEGIN IMMEDIATE")  # a push holding SQLite's one write lock
    try:
        started = time.monotonic()
        assert jobs.claim(hub, "w1", 60) is None
        assert time.monotonic() - started < 1.0  # did not wait out the busy timeout for the lock
    finally:
        writer.rollback()
        writer.close()


def test_claim_takes_the_oldest_due_job_and_sets_the_lease(hub, clock):
    first, second = enqueue_each(hub, make_repos(hub, 2), "test.noop", clock)

    job = jobs.claim(hub, "w1", 30)

    assert job.job_id == first != second
    assert (job.status, job.attempt, job.locked_by, job.locked_until) == ("running", 1, "w1", clock.now + 30)
    assert _job(first).status == "running"


def test_claim_waits_until_run_after(hub, clock, repo_id):
    jobs.enqueue(hub, repo_id, PREBUILD, {}, run_after=clock.now + 10)
    assert jobs.claim(hub, "w1", 60) is None

    clock.advance(10)

    assert jobs.claim(hub, "w1", 60) is not None


def test_an_expired_lease_is_reclaimed(hub, clock, repo_id):
    job_id = jobs.enqueue(hub, repo_id, PREBUILD, {})
    jobs.claim(hub, "dead", 10)
    clock.advance(9)
    assert jobs.claim(hub, "alive", 10) is None  # lease still live

    clock.advance(2)
    job = jobs.claim(hub, "alive", 10)

    assert job.job_id == job_id
    assert (job.attempt, job.locked_by, job.locked_until) == (2, "alive", clock.now + 10)


def test_renew_extends_the_lease(hub, clock, repo_id):
    job_id = jobs.enqueue(hub, repo_id, PREBUILD, {})
    jobs.claim(hub, "w1", 10)
    clock.advance(8)

    assert jobs.renew(hub, job_id, "w1", 10) is True
    clock.advance(8)

    assert _job(job_id).locked_until == clock.now + 2
    assert jobs.claim(hub, "w2", 10) is None


def test_a_worker_that_lost_its_lease_cannot_touch_the_job(hub, clock, repo_id):
    job_id = jobs.enqueue(hub, repo_id, PREBUILD, {})
    jobs.claim(hub, "stale", 10)
    clock.advance(11)
    jobs.claim(hub, "owner", 10)

    assert jobs.renew(hub, job_id, "stale", 10) is False
    assert jobs.complete(hub, job_id, "stale", {"by": "stale"}) is False
    assert jobs.fail(hub, job_id, "stale", "late", permanent=True) is False

    job = _job(job_id)
    assert (job.status, job.locked_by, job.result, job.last_error) == ("running", "owner", None, None)
    assert jobs.complete(hub, job_id, "owner", {"by": "owner"}) is True
    assert (_job(job_id).status, _job(job_id).result) == ("done", {"by": "owner"})


def test_complete_records_the_result(hub, clock, repo_id):
    job_id = jobs.enqueue(hub, repo_id, PREBUILD, {})
    jobs.claim(hub, "w1", 10)
    clock.advance(3)

    assert jobs.complete(hub, job_id, "w1", {"tips_built": 1}) is True

    job = _job(job_id)
    assert (job.status, job.result, job.finished_at, job.locked_until) == ("done", {"tips_built": 1}, clock.now, None)


# -- failure and backoff -------------------------------------------------------------

def test_backoff_doubles_from_two_seconds_and_caps_at_ten_minutes():
    no_jitter = [jobs.backoff_delay(n, rng=lambda: 0.5) for n in range(1, 13)]
    assert no_jitter == [2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600, 600]
    assert jobs.backoff_delay(1000, rng=lambda: 0.5) == 600


def test_backoff_jitter_stays_within_a_quarter():
    assert jobs.backoff_delay(3, rng=lambda: 0.0) == 6.0
    assert jobs.backoff_delay(3, rng=lambda: 1.0) == 10.0
    assert 450 <= jobs.backoff_delay(20, rng=lambda: 0.0) <= jobs.backoff_delay(20, rng=lambda: 1.0) <= 600


def test_failures_back_off_then_fail_for_good_keeping_the_last_error(hub, clock, repo_id):
    job_id = jobs.enqueue(hub, repo_id, PREBUILD, {})
    delays = []
    for attempt in range(1, 6):
        job = jobs.claim(hub, "w1", 60)
        assert (job.job_id, job.attempt) == (job_id, attempt)
        assert jobs.fail(hub, job_id, "w1", f"boom {attempt}", rng=lambda: 0.5) is True
        job = _job(job_id)
        if job.status == "pending":
            delays.append(job.run_after - clock.now)
            clock.advance(job.run_after - clock.now)

    job = _job(job_id)
    assert delays == [2, 4, 8, 16]
    assert (job.status, job.attempt, job.last_error, job.finished_at) == ("failed", 5, "boom 5", clock.now)
    assert jobs.claim(hub, "w1", 60) is None


def test_a_retry_keeps_its_error_and_releases_the_lock(hub, clock, repo_id):
    job_id = jobs.enqueue(hub, repo_id, PREBUILD, {})
    jobs.claim(hub, "w1", 60)

    jobs.fail(hub, job_id, "w1", "transient", rng=lambda: 0.0)

    job = _job(job_id)
    assert (job.status, job.last_error, job.locked_by, job.locked_until) == ("pending", "transient", None, None)
    assert job.run_after == clock.now + 1.5


def test_a_permanent_failure_is_not_retried(hub, repo_id):
    job_id = jobs.enqueue(hub, repo_id, PREBUILD, {})
    jobs.claim(hub, "w1", 60)

    assert jobs.fail(hub, job_id, "w1", "bad payload", permanent=True) is True

    assert (_job(job_id).status, _job(job_id).attempt, _job(job_id).last_error) == ("failed", 1, "bad payload")


def test_a_retry_that_meets_newer_pending_work_merges_into_it(hub, repo_id):
    failing = jobs.enqueue(hub, repo_id, PREBUILD, {"tip_commit_ids": ["old"]})
    jobs.claim(hub, "w1", 60)
    newer = jobs.enqueue(hub, repo_id, PREBUILD, {"tip_commit_ids": ["new"]})

    assert jobs.fail(hub, failing, "w1", "boom") is True

    assert (_job(failing).status, _job(failing).result) == ("done", {"superseded_by": newer})
    assert _job(newer).payload == {"tip_commit_ids": ["old", "new"]}
    assert _job(newer).status == "pending"


# -- housekeeping and reports -------------------------------------------------------

def test_prune_finished_deletes_only_old_done_and_failed_jobs(hub, clock):
    old_done, old_failed, new_done, waiting = enqueue_each(hub, make_repos(hub, 4), "test.noop", clock)
    for _ in range(3):
        jobs.claim(hub, "w1", 60)
    jobs.complete(hub, old_done, "w1", {})
    jobs.fail(hub, old_failed, "w1", "x", permanent=True)
    cutoff = clock.now + 1
    clock.advance(2)
    jobs.complete(hub, new_done, "w1", {})

    assert job_reports.prune_finished(hub, cutoff) == 2

    remaining = {job.job_id for job in BackgroundJob.select()}
    assert remaining == {new_done, waiting}


def test_prune_finished_dry_run_counts_without_deleting(hub, clock, repo_id):
    job_id = jobs.enqueue(hub, repo_id, PREBUILD, {})
    jobs.claim(hub, "w1", 60)
    jobs.complete(hub, job_id, "w1", {})

    assert job_reports.prune_finished(hub, clock.now + 1, dry_run=True) == 1

    assert job_reports.get(hub, job_id) is not None


def test_counts_and_recent_describe_the_table(hub, clock):
    first, second, _ = enqueue_each(hub, make_repos(hub, 3), "test.noop", clock)
    jobs.claim(hub, "w1", 60)
    jobs.complete(hub, first, "w1", {"ok": True})

    assert job_reports.counts_by_status(hub) == {"pending": 2, "running": 0, "done": 1, "failed": 0}
    listed = job_reports.recent(hub, limit=2)
    assert len(listed) == 2 and json.loads(json.dumps(listed)) == listed
    assert job_reports.recent(hub)[-1]["result"] == {"ok": True}
    assert job_reports.get(hub, second).job_id == second and job_reports.get(hub, "nope") is None
    assert job_reports.overview(hub, limit=1) == {"counts": job_reports.counts_by_status(hub),
                                                  "recent": job_reports.recent(hub, 1)}
