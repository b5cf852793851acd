"""Prebuild latency and job throughput (issue 4): how soon after a push its tip's pack is cached, and how fast the job pool turns.

Latency: a generated history (``bench.synth`` seed 1; ``--scale``, default
0.25) is pushed to a live gunicorn hub (2 workers, job poll 2 s, the
default), minus its last commits; those are then pushed a few at a time. After
each push's response the hub's SQLite file is polled read-only (never
``/fetch/mpack``, which would build on a miss) until the tip's clone row
(base '') exists, then until the job is done. The anchor: the cold build of
the same packs in-process, ``fetch.wire_fetch_mpack`` with the row and the
pack file removed first. Throughput: 2,000 jobs for distinct repos through a
``JobPool`` of 2 threads with a no-op handler, next to a plain ``sqlite3``
loop of the same claim (``UPDATE … RETURNING``) and complete statements on a
database with the same schema and pragmas (``--quick``: 200 jobs).
"""
from __future__ import annotations

import secrets
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.live_hub import live_hub
from bench.synth import CommitStep, Synth
from bench.util import Table, median, timer, wait_until
from bench.wire import HubDb, batches, push_batch
from mpack.hub import cache, fetch, jobs
from mpack.hub.bootstrap import build_hub
from mpack.hub.db import SQLITE_PRAGMAS, open_database
from mpack.hub.jobs import JobRegistry
from mpack.hub.migrations import migrate
from mpack.hub.models import FetchMPackCache, Repo
from mpack.hub.pool import JobPool
from mpack.hub.services import Hub
from mpack.hub.settings import Settings
from storage.base import MPACKS

SEED = 1
DEFAULT_SCALE, QUICK_SCALE = 0.25, 0.02
PUSHES, QUICK_PUSHES = 5, 3
COMMITS_PER_PUSH = 3
BASE_COMMITS_PER_PUSH = 100
JOBS, QUICK_JOBS = 2000, 200
NOOP = "bench.noop"
OWNER, NAME = "bench", "prebuild"
PATH = f"/{OWNER}/{NAME}"
DB_FILE = "mpackhub.sqlite3"
WAIT = 600.0


@dataclass
class Latency:
    tips: list[str] = field(default_factory=list)
    to_row: list[float] = field(default_factory=list)   # push response → clone row
    to_done: list[float] = field(default_factory=list)  # push response → job done


# -- push → cache row ------------------------------------------------------------

def push_and_watch(home: Path, base: list[CommitStep], measured: list[CommitStep]) -> Latency:
    """Push ``base`` and let its prebuild finish, then time each small push of ``measured``."""
    latency = Latency()
    with live_hub(home, workers=2, env={"MPACKHUB_JOB_POLL_SECONDS": "2"}) as hub:
        token = hub.create_user(OWNER)
        repo_id = hub.create_repo(token, NAME)["repo_id"]
        db = HubDb(home / DB_FILE)
        try:
            for batch in batches(base, BASE_COMMITS_PER_PUSH):
                push_batch(hub, token, PATH, batch)
            wait_until(db.jobs_idle, WAIT, what="the base history's prebuild")
            for batch in batches(measured, COMMITS_PER_PUSH):
                push_batch(hub, token, PATH, batch)
                _watch(db, repo_id, batch.tip, latency)
        finally:
            db.close()
    return latency


def _watch(db: HubDb, repo_id: str, tip: str, latency: Latency) -> None:
    started = time.perf_counter()
    wait_until(lambda: db.has_full_pack_row(repo_id, tip), WAIT, 0.002, what=f"the cache row of {tip}")
    latency.to_row.append(time.perf_counter() - started)
    wait_until(db.jobs_idle, WAIT, 0.002, what="the prebuild job")
    latency.to_done.append(time.perf_counter() - started)
    latency.tips.append(tip)


def cold_builds(home: Path, tips: list[str]) -> tuple[list[float], list[int]]:
    """In-process on the hub's data: drop each tip's row and pack, time ``wire_fetch_mpack`` → (seconds, sizes)."""
    hub = build_hub(Settings.for_home(home, job_threads=0))
    seconds, sizes = [], []
    try:
        repo = Repo.get((Repo.owner == OWNER) & (Repo.name == NAME))
        for tip in tips:
            _forget(hub, repo, tip)
            with timer() as t:
                answer = fetch.wire_fetch_mpack(hub, repo, [tip], [])
            if answer["cached"]:
                raise RuntimeError(f"the cold build of {tip} was a cache hit")
            seconds.append(t.seconds)
            sizes.append(answer["size_bytes"])
    finally:
        hub.db.close()
    return seconds, sizes


def _forget(hub: Hub, repo: Repo, tip: str) -> None:
    """Remove the clone row of ``tip`` and its pack file (unless another row names it)."""
    row = FetchMPackCache.get_by_id(cache.cache_id(repo.repo_id, tip, ""))
    row.delete_instance()
    if not FetchMPackCache.select().where(FetchMPackCache.mpack_id == row.mpack_id).exists():
        hub.store.delete(MPACKS, row.mpack_id)


# -- job throughput ---------------------------------------------------------------

def _noop(hub: Hub, job_id: str) -> dict:
    return {}


def jobs_hub(home: Path) -> Hub:
    """A hub on a fresh, migrated SQLite file, with no store and no pool."""
    home.mkdir(parents=True)
    database = open_database(f"sqlite:///{home / DB_FILE}")
    migrate(database)
    return Hub(settings=Settings.for_home(home, job_threads=0), db=database, store=None)


def _add_repos(hub: Hub, count: int) -> list[str]:
    repo_ids = [f"repo{n:05d}" for n in range(count)]
    rows = [{"repo_id": r, "owner": OWNER, "name": r, "visibility": "public", "created_at": hub.now()} for r in repo_ids]
    with hub.db.atomic():
        for start in range(0, count, 500):
            Repo.insert_many(rows[start:start + 500]).execute()
    return repo_ids


def pool_run(home: Path, count: int) -> tuple[float, float]:
    """Enqueue ``count`` no-op jobs (distinct repos), then run them with a 2-thread pool → (enqueue s, run s)."""
    hub = jobs_hub(home)
    try:
        repo_ids = _add_repos(hub, count)
        with timer() as enqueued:
            for repo_id in repo_ids:
                jobs.enqueue(hub, repo_id, NOOP, {})
        return enqueued.seconds, _drain(hub, home / DB_FILE, count)
    finally:
        hub.db.close()


def _drain(hub: Hub, path: Path, count: int) -> float:
    pool = JobPool(hub, threads=2, registry=JobRegistry({NOOP: _noop}), poll_seconds=0.05)
    watch = HubDb(path)
    try:
        with timer() as t:
            pool.start()
            wait_until(lambda: watch.jobs_with_status(jobs.DONE) == count, WAIT, what="the no-op jobs")
    finally:
        pool.stop()
        watch.close()
    return t.seconds


CLAIM = """UPDATE background_job SET status = 'running', attempt = attempt + 1, locked_by = ?1, locked_until = ?2
WHERE job_id = (SELECT job_id FROM background_job
                WHERE (status = 'pending' AND run_after <= ?3) OR (status = 'running' AND locked_until < ?3)
                ORDER BY run_after, created_at LIMIT 1)
  AND ((status = 'pending' AND run_after <= ?3) OR (status = 'running' AND locked_until < ?3))
RETURNING job_id"""
COMPLETE = """UPDATE background_job SET status = 'done', result = '{}', finished_at = ?1, locked_until = NULL
WHERE job_id = ?2 AND locked_by = ?3 AND status = 'running'"""


def anchor_db(home: Path, count: int) -> sqlite3.Connection:
    """The anchor's database: the hub's schema and pragmas, ``count`` pending jobs for distinct repos."""
    hub = jobs_hub(home)
    _add_repos(hub, count)
    hub.db.close()
    conn = sqlite3.connect(home / DB_FILE, isolation_level=None)
    for name, value in SQLITE_PRAGMAS.items():
        conn.execute(f"PRAGMA {name} = {value}")
    now = time.time()
    rows = [(secrets.token_hex(32), f"repo{n:05d}", NOOP, "{}", "pending", now + n * 1e-6, now + n * 1e-6, 0, 5)
            for n in range(count)]
    with conn:
        conn.executemany("INSERT INTO background_job (job_id, repo_id, job_type, payload, status, created_at, "
                         "run_after, attempt, max_attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return conn


def anchor_loop(home: Path, count: int) -> float:
    """Plain sqlite3: claim (in BEGIN IMMEDIATE) and complete, ``count`` times, one thread → seconds."""
    conn = anchor_db(home, count)
    try:
        with timer() as t:
            for _ in range(count):
                conn.execute("BEGIN IMMEDIATE")
                (job_id,) = conn.execute(CLAIM, ("anchor", time.time() + 60, time.time())).fetchone()
                conn.execute("COMMIT")
                conn.execute(COMPLETE, (time.time(), job_id, "anchor"))
        done = conn.execute("SELECT COUNT(*) FROM background_job WHERE status = 'done'").fetchone()[0]
    finally:
        conn.close()
    if done != count:
        raise RuntimeError(f"the anchor loop finished {done} of {count} jobs")
    return t.seconds


# -- tables -----------------------------------------------------------------------

def latency_table(scale: float, base: int, latency: Latency, cold: list[float], sizes: list[int]) -> Table:
    title = (f"push → cached pack: base {base:,} commits (synth seed {SEED}, scale {scale:g}), "
             f"{len(latency.to_row)} pushes of {COMMITS_PER_PUSH} commits, packs ~{median(sizes) / 1e6:,.1f} MB; "
             f"ratio = median ÷ anchor median")
    table = Table("measurement", "median s", "min s", "max s", "ratio", title=title)
    anchor = median(cold)
    for label, values in (("cold build: wire_fetch_mpack, no row, no pack (anchor)", cold),
                          ("push response → the tip's cache row exists", latency.to_row),
                          ("push response → prebuild job done (incl. delta pack)", latency.to_done)):
        table.add(label, median(values), min(values), max(values), median(values) / anchor)
    return table


def jobs_table(count: int, anchor_s: float, enqueue_s: float, pool_s: float) -> Table:
    title = f"job throughput: {count:,} jobs for distinct repos, no-op handler; ratio = jobs/s ÷ anchor jobs/s"
    table = Table("measurement", "jobs", "seconds", "jobs/s", "ratio", title=title)
    table.add("plain sqlite3 claim (UPDATE … RETURNING) + complete, 1 thread (anchor)", count, anchor_s,
              count / anchor_s, 1.0)
    table.add("JobPool, 2 threads: claim, run, complete", count, pool_s, count / pool_s, anchor_s / pool_s)
    table.add("jobs.enqueue, one per repo", count, enqueue_s, count / enqueue_s, anchor_s / enqueue_s)
    return table


def run(scale: float | None, quick: bool) -> list[Table]:
    scale = scale or (QUICK_SCALE if quick else DEFAULT_SCALE)
    held = (QUICK_PUSHES if quick else PUSHES) * COMMITS_PER_PUSH
    count = QUICK_JOBS if quick else JOBS
    steps = list(Synth(SEED, scale))
    if len(steps) <= held:
        raise ValueError(f"scale {scale:g} gives {len(steps)} commits; need more than {held}")
    with tempfile.TemporaryDirectory(prefix="bench-prebuild-") as tmp:
        home = Path(tmp) / "hub"
        latency = push_and_watch(home, steps[:-held], steps[-held:])
        cold, sizes = cold_builds(home, latency.tips)
        anchor_s = anchor_loop(Path(tmp) / "anchor", count)
        enqueue_s, pool_s = pool_run(Path(tmp) / "jobs", count)
    return [latency_table(scale, len(steps) - held, latency, cold, sizes),
            jobs_table(count, anchor_s, enqueue_s, pool_s)]
