"""A worker killed with SIGKILL in the middle of a prebuild: another process finishes the job."""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import webtest

from app import create_app
from bench.live_hub import poll
from mpack.hub import gc
from mpack.hub.bootstrap import build_hub
from mpack.hub.handlers import production_registry
from mpack.hub.models import BackgroundJob, FetchMPackCache
from mpack.hub.pool import run_until_idle
from mpack.hub.settings import Settings
from tests.crash_support import build_then_hang
from tests.database import database_url
from tests.factories import History, make_repo, make_user, push_history

LEASE = 2




def test_a_killed_prebuild_is_reclaimed_and_completed_once(tmp_path):
    home = tmp_path / "hub"
    settings = Settings.for_home(home,
                                 database_url=database_url(home), public_url="http://hub.test", job_threads=0,
                                 job_lease_seconds=LEASE)
    hub = build_hub(settings)
    user, token = make_user(hub, "gabriel")
    repo = make_repo(hub, user, "song")
    history = History().linear(4)
    push_history(webtest.TestApp(create_app(hub)), token, "/gabriel/song", history)
    hub.db.close()

    marker = tmp_path / "blocked"
    child = multiprocessing.get_context("spawn").Process(target=build_then_hang, args=(str(home), str(marker), LEASE))
    child.start()
    try:
        poll(marker.exists, 30, "the child to block mid-build")
        assert list(hub.store.iter_temp()), "the child's half-written pack should be in the store's tmp"
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    finally:
        if child.is_alive():
            child.kill()

    job = BackgroundJob.get()
    assert job.status == "running" and job.locked_by.startswith("doomed-worker")
    poll(lambda: run_until_idle(hub, production_registry(), "rescuer", lease_seconds=LEASE) > 0, 3 * LEASE + 10,
         "the lease to expire and the rescuer to run the job")

    job = BackgroundJob.get_by_id(job.job_id)
    assert job.status == "done" and job.attempt == 2
    rows = list(FetchMPackCache.select().where(FetchMPackCache.repo == repo))
    assert [r.tip_commit_id for r in rows] == [history.tip]
    assert hub.store.exists("mpacks", rows[0].mpack_id)

    later = build_hub(settings, clock=lambda: time.time() + gc.TEMP_GRACE + 60)
    report = gc.run_gc(later)
    assert report.orphans_deleted >= 1
    assert list(later.store.iter_temp()) == []
    assert later.store.exists("mpacks", rows[0].mpack_id)
    assert Path(later.store.local_path("mpacks", rows[0].mpack_id)).stat().st_size == rows[0].size
