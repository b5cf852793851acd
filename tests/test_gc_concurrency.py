"""GC racing fetches, downloads, pushes and prebuilds on one hub: no live URL breaks, no row names a missing pack.

For about three seconds (a deadline, not sleeps) one thread runs GC in a loop
and moves the hub's clock forward, so that cache rows (60 s TTL) expire while
other threads fetch several tips, cached and not, download what they were
given and URLs issued earlier, push new commits to two repos that share their
history (and so their packs), and run the prebuild jobs those pushes enqueue.
Each thread has its own TestApp (not thread-safe) over the same hub, and
closes its own database connection.

The hub's clock runs about a thousand times faster than real time, so it
stands still while a fetch or a download is in flight: between pricing a URL
and signing it, or checking it and opening its file, a real server spends
microseconds, not minutes. GC itself still runs in the middle of them.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
from dataclasses import dataclass, field

import pytest
import webtest

from app import create_app
from mpack.hub import fetch, gc, handlers, pool
from mpack.hub.bootstrap import build_hub
from mpack.hub.models import BackgroundJob, FetchMPackCache, Repo
from mpack.hub.settings import Settings
from storage.base import MPACKS
from tests.database import database_url
from tests.factories import History, make_repo, make_user, push_history

RUN_SECONDS = 3.0
OVERTIME = 20.0
GC_STEP = 5.0  # hub seconds per GC pass: rows (60 s) expire every dozen passes
REPOS = ("song", "cover")


class SharedClock:
    """A hand-moved clock that many threads read while one moves it; it stands still during a ``still()`` block."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._changed = threading.Condition()
        self._still = 0  # blocks in progress
        self._moving = False  # an advance is waiting: new blocks wait for it, so it is never starved

    def __call__(self) -> float:
        with self._changed:
            return self._now

    @contextlib.contextmanager
    def still(self):
        with self._changed:
            self._changed.wait_for(lambda: not self._moving, timeout=10)
            self._still += 1
        try:
            yield
        finally:
            with self._changed:
                self._still -= 1
                self._changed.notify_all()

    def advance(self, seconds: float) -> None:
        with self._changed:
            self._moving = True
            self._changed.wait_for(lambda: not self._still, timeout=10)
            self._now += seconds
            self._moving = False
            self._changed.notify_all()


@dataclass
class Race:
    hub: object
    clock: SharedClock
    token: str
    history: History
    deadline: float
    tips: list[str] = field(default_factory=list)  # every tip pushed so far (to both repos)
    issued: list[tuple[str, int, str]] = field(default_factory=list)  # (url, expires, mpack digest)
    errors: list[str] = field(default_factory=list)
    reports: list[gc.GcReport] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def running(self) -> bool:
        """Until the deadline; past it (at most ``OVERTIME``) until GC has collected rows and packs, which
        a slower database (PostgreSQL, a busy machine) may not reach in ``RUN_SECONDS``."""
        if self.errors:
            return False
        now = time.monotonic()
        return now < self.deadline or (now < self.deadline + OVERTIME and not self.collected())

    def collected(self) -> bool:
        with self.lock:
            reports = list(self.reports)
        return sum(r.cache_rows_deleted for r in reports) > 0 and sum(r.mpacks_deleted for r in reports) > 0

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def app(self) -> webtest.TestApp:
        return webtest.TestApp(create_app(self.hub))


def expires_of(url: str) -> int:
    return int(url.rsplit("expires=", 1)[1].split("&", 1)[0])


def check_download(race: Race, app, url: str, expires: int, digest: str) -> None:
    """200 with the pack's bytes while the URL is live; 403 only once it has expired; never a missing pack."""
    with race.clock.still():
        response = app.get(url.replace("http://hub.test", ""), expect_errors=True)
    if response.status_int == 200:
        if hashlib.sha256(response.body).hexdigest() != digest:
            race.errors.append(f"{url}: wrong bytes")
    elif response.status_int != 403 or race.clock() <= expires:
        race.errors.append(f"{url}: {response.status} at {race.clock()} (expires {expires}): {response.body[:120]!r}")


def worker(race: Race, name: str, step) -> None:
    """Run ``step`` until the deadline; record any exception; close this thread's connection."""
    try:
        state = {"app": race.app(), "rng": random.Random(name)}
        while race.running():
            step(race, state)
            race.count(name)
    except Exception as exc:
        race.errors.append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        race.hub.db.close()


def collect(race: Race, state: dict) -> None:
    race.clock.advance(GC_STEP)
    race.reports.append(gc.run_gc(race.hub))


def fetch_a_tip(race: Race, state: dict) -> None:
    rng = state["rng"]
    with race.lock:
        tips = list(race.tips)
    repo = Repo.get(Repo.name == rng.choice(REPOS))
    tip = rng.choice(tips[-6:] if rng.random() < 0.7 else tips)  # recent tips are mostly cached
    older = tips[: tips.index(tip)]
    have = [rng.choice(older)] if older and rng.random() < 0.3 else []  # a delta pack, cached under its haves
    with race.clock.still():
        answer = fetch.wire_fetch_mpack(race.hub, repo, want=[tip], have=have)
    digest, url = answer["mpack_id"][-64:], answer["mpack_url"]
    with race.lock:
        race.issued.append((url, expires_of(url), digest))
    check_download(race, state["app"], url, expires_of(url), digest)
    with race.lock:
        earlier = rng.choice(race.issued[-50:])
    check_download(race, state["app"], *earlier)  # issued a while ago: maybe near its expiry, maybe past it


def push_a_commit(race: Race, state: dict) -> None:
    commit = race.history.commit()
    for name in REPOS:
        push_history(state["app"], race.token, f"/gabriel/{name}", race.history, commits=[commit])
    with race.lock:
        race.tips.append(commit["commit_id"])


def run_prebuilds(race: Race, state: dict) -> None:
    ran = pool.run_until_idle(race.hub, state.setdefault("registry", handlers.production_registry()), "w")
    race.count("prebuild jobs", ran)
    if not ran:
        threading.Event().wait(0.01)  # idle: let the pushes catch up


@pytest.fixture
def race(tmp_path):
    clock = SharedClock(time.time())
    settings = Settings.for_home(tmp_path / "hub",
                                 database_url=database_url(tmp_path / "hub"), public_url="http://hub.test", job_threads=0,
                                 cache_ttl=60,
                                 # The race is GC's: every thread is one test client, none to be shed as busy.
                                 request_builds=8, request_builds_per_client=0, downloads=8, downloads_per_client=0)
    hub = build_hub(settings, clock=clock)
    user, token = make_user(hub, "gabriel")
    history = History().linear(4)
    app = webtest.TestApp(create_app(hub))
    for name in REPOS:
        make_repo(hub, user, name)
        push_history(app, token, f"/gabriel/{name}", history)
    race = Race(hub=hub, clock=clock, token=token, history=history, deadline=0.0,
                tips=[c["commit_id"] for c in history.commits])
    yield race
    hub.db.close()


def test_gc_racing_fetches_pushes_and_prebuilds_breaks_no_url_and_no_row(race):
    steps = {"gc": collect, "fetch-1": fetch_a_tip, "fetch-2": fetch_a_tip, "fetch-3": fetch_a_tip,
             "push": push_a_commit, "prebuild": run_prebuilds}
    race.deadline = time.monotonic() + RUN_SECONDS
    threads = [threading.Thread(target=worker, args=(race, name, step), name=name) for name, step in steps.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RUN_SECONDS + OVERTIME + 30)

    assert not any(thread.is_alive() for thread in threads)
    assert race.errors == []
    hub, app = race.hub, race.app()
    missing = [row.mpack_id for row in FetchMPackCache.select() if not hub.store.exists(MPACKS, row.mpack_id)]
    assert missing == []
    live = [(url, expires, digest) for url, expires, digest in race.issued if expires >= race.clock()]
    for url, expires, digest in live:
        check_download(race, app, url, expires, digest)
    assert race.errors == []
    assert [job.last_error for job in BackgroundJob.select() if job.last_error] == []
    # The race really happened: rows expired and were collected while all of it went on.
    assert sum(r.cache_rows_deleted for r in race.reports) > 0
    assert sum(r.mpacks_deleted for r in race.reports) > 0
    assert min(race.counts.get(name, 0) for name in steps) > 0, race.counts
