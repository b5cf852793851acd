"""Full disks (issue 9, item 8): 507 with a clear error, /healthz degraded, prebuilds retried when space is back.

The disks are real: a small tmpfs mounted for the test (the database's file, or
the store's directory, lives on it) and filled with a file until ENOSPC. Where
mounting is not allowed (not root, no CAP_SYS_ADMIN) the tests are skipped.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import webtest

from app import create_app
from mpack.hub import cache, gc, jobs, prebuild
from mpack.hub.bootstrap import build_hub
from mpack.hub.handlers import production_registry
from mpack.hub.models import BackgroundJob, Commit, FetchMPackCache
from mpack.hub.pool import run_until_idle
from mpack.hub.settings import Settings
from tests.factories import Clock, History, error_of, make_repo, make_user, push_history, wire

PATH = "/gabriel/song"
DISK_SIZE = "4m"


class SmallDisk:
    """A mounted tmpfs that a filler file can fill up and give back."""

    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self.filler = mount / ".filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, bytes(64 * 1024))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        try:
            while True:  # the last pages, one small write at a time
                os.write(fd, bytes(512))
        except OSError:
            pass
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


def mount_small_disk(where: Path) -> SmallDisk:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return SmallDisk(where)


def unmount(disk: SmallDisk) -> None:
    subprocess.run(["umount", "-l", str(disk.mount)], capture_output=True, check=False)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_hub(tmp_path, clock, **overrides):
    settings = Settings.for_home(tmp_path / "hub", public_url="http://hub.test", job_threads=0, **overrides)
    return build_hub(settings, clock=clock)


@pytest.fixture
def db_disk(tmp_path):
    """A hub whose database file lives on a small disk (the store does not)."""
    disk = mount_small_disk(tmp_path / "dbdisk")
    yield disk
    unmount(disk)


@pytest.fixture
def db_on_disk(tmp_path, clock, db_disk):
    hub = make_hub(tmp_path, clock, database_url=f"sqlite:///{db_disk.mount / 'hub.sqlite3'}")
    yield hub
    hub.db.close()


@pytest.fixture
def store_disk(tmp_path):
    disk = mount_small_disk(tmp_path / "hub" / "store")
    yield disk
    unmount(disk)


@pytest.fixture
def store_on_disk(tmp_path, clock, store_disk):
    hub = make_hub(tmp_path, clock, job_max_attempts=1)
    yield hub
    hub.db.close()


def user_and_repo(hub):
    app = webtest.TestApp(create_app(hub))
    owner, token = make_user(hub, "gabriel")
    repo = make_repo(hub, owner, "song")
    return app, token, repo


# -- the database's disk --------------------------------------------------------------

def test_a_full_database_is_507_with_a_clear_error_and_no_misleading_log(db_on_disk, db_disk, caplog):
    app, token, repo = user_and_repo(db_on_disk)
    history = History().linear(3)
    push_history(app, token, PATH, history)
    history.linear(200)
    bundle = history.bundle(history.commits[3:])
    objects, bundle["objects"] = bundle["objects"], []
    wire(app, "POST", f"{PATH}/push/objects", {"objects": objects}, token=token, status=200)
    db_disk.fill()

    with caplog.at_level(logging.INFO):
        response = wire(app, "POST", f"{PATH}/push", {"bundle": bundle, "branch": "main", "force": False}, token=token)
        refused = wire(app, "POST", "/admin/users", {"username": "ada"}, token=db_on_disk.settings.admin_token)

    for answer in (response, refused):
        error = error_of(answer, 507)
        assert error["error"] == "database_full" and "full" in error["detail"]
    assert "cannot rollback" not in caplog.text and "Traceback" not in caplog.text
    assert not any(r.exc_info for r in caplog.records)
    assert Commit.select().count() == 3  # nothing half-applied
    db_disk.free()
    push_history(app, token, PATH, history, commits=history.commits[3:], status=200)
    assert Commit.select().count() == 203


def test_healthz_is_503_while_the_database_cannot_take_a_write(db_on_disk, db_disk, clock):
    app = webtest.TestApp(create_app(db_on_disk))
    assert app.get("/healthz").json["database_writable"] is True
    db_disk.fill()
    clock.advance(db_on_disk.settings.health_probe_seconds)  # the last probe's answer has expired

    response = app.get("/healthz", expect_errors=True)

    assert response.status_int == 503
    assert response.json["status"] == "degraded" and response.json["database_writable"] is False
    db_disk.free()
    clock.advance(db_on_disk.settings.health_probe_seconds)
    assert app.get("/healthz", status=200).json["status"] == "ok"


def test_healthz_answers_from_its_last_probe_for_a_while(db_on_disk, db_disk, clock):
    """/healthz is anonymous and its probes are disk syncs: within health_probe_seconds of a probe the next
    checks reuse its answer (a disk filled meanwhile shows once that time is up)."""
    app = webtest.TestApp(create_app(db_on_disk))
    assert app.get("/healthz").json["status"] == "ok"
    db_disk.fill()
    clock.advance(db_on_disk.settings.health_probe_seconds * 0.9)
    assert app.get("/healthz").json["database_writable"] is True  # not probed again: the filled disk unseen
    clock.advance(db_on_disk.settings.health_probe_seconds * 0.1)
    assert app.get("/healthz", expect_errors=True).json["database_writable"] is False


# -- the store's disk -----------------------------------------------------------------

def test_a_full_store_is_507_and_leaves_no_partial_file(store_on_disk, store_disk):
    app, token, repo = user_and_repo(store_on_disk)
    history = History()
    history.commit({"big.bin": os.urandom(256 * 1024)})
    store_disk.fill()

    objects = [{"object_id": o, "content": c} for o, c in history.blobs.items()]
    response = wire(app, "POST", f"{PATH}/push/objects", {"objects": objects}, token=token)

    error = error_of(response, 507)
    assert error["error"] == "storage_full"
    assert list(store_on_disk.store.iter_digests("blobs")) == [] and list(store_on_disk.store.iter_temp()) == []
    store_disk.free()
    push_history(app, token, PATH, history, status=200)


def test_healthz_is_503_while_the_store_cannot_take_a_write(store_on_disk, store_disk, clock):
    app = webtest.TestApp(create_app(store_on_disk))
    store_disk.fill()
    response = app.get("/healthz", expect_errors=True)
    assert response.status_int == 503 and response.json["store_writable"] is False
    store_disk.free()
    clock.advance(store_on_disk.settings.health_probe_seconds)  # the failed probe's answer has expired
    assert app.get("/healthz", status=200).json["store_writable"] is True


# -- prebuilds that gave up on a full disk --------------------------------------------------

def failed_prebuild(hub, app, token, disk) -> tuple[History, str]:
    """A push whose prebuild ran out of space and gave up (max_attempts 1)."""
    history = History()
    history.commit({"song.mid": os.urandom(64 * 1024)})
    push_history(app, token, PATH, history)
    disk.fill()
    run_until_idle(hub, production_registry(), "test-worker")
    job = BackgroundJob.get(BackgroundJob.job_type == prebuild.PREBUILD)
    assert job.status == jobs.FAILED and job.result == {"error_code": "storage_full"}
    return history, job.job_id


def test_gc_retries_a_prebuild_that_failed_on_a_full_disk_once_space_is_back(store_on_disk, store_disk):
    hub = store_on_disk
    app, token, repo = user_and_repo(hub)
    history, failed = failed_prebuild(hub, app, token, store_disk)

    assert gc.run_gc(hub).prebuilds_requeued == 0  # still full: nothing to gain
    store_disk.free()
    assert gc.run_gc(hub).prebuilds_requeued == 1
    run_until_idle(hub, production_registry(), "test-worker")

    assert FetchMPackCache.select().where(FetchMPackCache.tip_commit_id == history.tip).count() == 1
    assert BackgroundJob.get_by_id(failed).result["requeued_as"]
    assert gc.run_gc(hub).prebuilds_requeued == 0  # requeued once, not again


def test_the_next_push_retries_a_prebuild_that_failed_on_a_full_disk(store_on_disk, store_disk):
    hub = store_on_disk
    app, token, repo = user_and_repo(hub)
    history, failed = failed_prebuild(hub, app, token, store_disk)
    first_tip = history.tip
    store_disk.free()
    history.commit({"more.txt": b"more"})
    push_history(app, token, PATH, history, commits=history.commits[1:], branch="dev")

    run_until_idle(hub, production_registry(), "test-worker")

    tips = {r.tip_commit_id for r in FetchMPackCache.select()}
    assert {first_tip, history.tip} <= tips
    assert BackgroundJob.get_by_id(failed).status == jobs.DONE


# -- without a mount: SQLite's own size limit -----------------------------------------------

def test_a_database_at_its_size_limit_is_507_and_degraded(tmp_path, clock):
    """``PRAGMA max_page_count`` gives SQLITE_FULL on any machine, root or not."""
    hub = make_hub(tmp_path, clock)
    app, token, repo = user_and_repo(hub)
    pages = hub.db.execute_sql("PRAGMA page_count").fetchone()[0]
    hub.db.execute_sql(f"PRAGMA max_page_count = {pages}")  # this connection: the test's thread
    history = History().linear(40)
    objects = history.bundle()["objects"]

    response = wire(app, "POST", f"{PATH}/push/objects", {"objects": objects}, token=token)
    health = app.get("/healthz", expect_errors=True)

    assert error_of(response, 507)["error"] == "database_full"
    assert health.status_int == 503 and health.json["database_writable"] is False
    hub.db.execute_sql(f"PRAGMA max_page_count = {2 ** 30}")
    clock.advance(hub.settings.health_probe_seconds)  # the failed probe's answer has expired
    assert app.get("/healthz", status=200).json["status"] == "ok"
    hub.db.close()


class Boom(Exception):
    pass


@pytest.mark.parametrize("nested", [False, True])
def test_a_transaction_sqlite_already_rolled_back_keeps_its_own_error(tmp_path, clock, nested):
    """What SQLITE_FULL may do: SQLite ends the transaction itself; the error that caused it must surface."""
    hub = make_hub(tmp_path, clock)
    with pytest.raises(Boom), hub.db.atomic():
        if nested:
            with hub.db.atomic():
                hub.db.execute_sql("ROLLBACK")  # as SQLite does on SQLITE_FULL
                raise Boom()
        hub.db.execute_sql("ROLLBACK")
        raise Boom()
    with hub.db.atomic():  # and the connection is usable again
        make_user(hub, "after")
    hub.db.close()


# -- the pack cache leaves the disk's last percent to pushes ------------------------------------

def test_a_request_build_that_would_eat_the_disks_reserve_is_a_503_and_leaves_nothing(tmp_path, clock, store_disk):
    """Packs are a cache; a push that finds no disk fails. With 2 MiB of the 4 MiB store disk kept in reserve,
    a clone's miss whose pack would go below it is refused (503 cache_full, Retry-After) — no pack, row or
    temp left — while a push still fits; once there is room the same clone builds."""
    hub = make_hub(tmp_path, clock, build_min_free_percent=50)
    app, token, _ = user_and_repo(hub)
    history = History()
    history.commit({"a.bin": os.urandom(768 * 1024)})
    push_history(app, token, PATH, history)
    free, _ = hub.store.disk_space()
    with open(store_disk.filler, "wb") as filler:  # leave 1.5 MiB free: less than the reserve once the pack is in
        filler.write(bytes(free - 1536 * 1024))

    refused = app.post_json(f"{PATH}/fetch/mpack", {"want": [history.tip], "have": []}, expect_errors=True)

    assert refused.status_int == 503 and refused.json["error"] == "cache_full", refused.body
    assert refused.headers["Retry-After"] == "60"
    assert list(hub.store.iter_digests("mpacks")) == [] and list(hub.store.iter_temp()) == []
    assert FetchMPackCache.select().count() == 0
    history.commit({"b.bin": os.urandom(256 * 1024)})
    push_history(app, token, PATH, history, commits=history.commits[1:], status=200)  # the reserve is the push's
    store_disk.free()
    built = app.post_json(f"{PATH}/fetch/mpack", {"want": [history.tip], "have": []})
    assert built.json["cached"] is False and list(hub.store.iter_digests("mpacks"))


def a_cached_pack_then_a_full_disk(tmp_path, clock, disk: SmallDisk):
    """A hub whose reserve is half its store's disk, one cached pack (512 KiB of blobs), a push adding 256 KiB,
    and the disk filled so that the new tip's pack (768 KiB) lacks 256 KiB above the reserve — which evicting
    the cached pack would give → (hub, app, the cached pack's answer, the new tip)."""
    hub = make_hub(tmp_path, clock, build_min_free_percent=50)
    app, token, _ = user_and_repo(hub)
    history = History()
    history.commit({"a.bin": os.urandom(512 * 1024)})
    push_history(app, token, PATH, history)
    cached = app.post_json(f"{PATH}/fetch/mpack", {"want": [history.tip], "have": []}).json
    history.commit({"b.bin": os.urandom(256 * 1024)})
    push_history(app, token, PATH, history, commits=history.commits[1:])
    free, total = hub.store.disk_space()
    reserve = total * hub.settings.build_min_free_percent // 100
    with open(disk.filler, "wb") as filler:
        filler.write(bytes(free - (reserve + 768 * 1024 - 256 * 1024)))
    return hub, app, cached, history.tip


def test_a_request_build_at_the_reserve_evicts_an_idle_cached_pack_instead_of_refusing(tmp_path, clock, store_disk):
    """A full cache makes way for a clone: a pack no live URL can come from (unused for longer than a URL lives)
    is evicted, least recently used first, and the clone builds — not a 503 until the next GC."""
    hub, app, old, tip = a_cached_pack_then_a_full_disk(tmp_path, clock, store_disk)
    clock.advance(hub.settings.url_ttl + cache.HIT_WRITE_INTERVAL + gc.EXPIRY_SLACK + 1)  # its URLs have ended

    built = app.post_json(f"{PATH}/fetch/mpack", {"want": [tip], "have": []})

    assert built.json["cached"] is False
    assert list(hub.store.iter_digests("mpacks")) == [built.json["mpack_id"][-64:]]
    assert [row.tip_commit_id for row in FetchMPackCache.select()] == [tip]
    assert old["mpack_id"] != built.json["mpack_id"]
    assert hub.metrics.totals("gc_rows_deleted", "reason").get("room") == 1.0


def test_a_cached_pack_whose_url_may_be_live_is_not_evicted_for_room(tmp_path, clock, store_disk):
    hub, app, old, tip = a_cached_pack_then_a_full_disk(tmp_path, clock, store_disk)
    clock.advance(hub.settings.url_ttl - 60)  # a URL handed out with the old pack still works

    refused = app.post_json(f"{PATH}/fetch/mpack", {"want": [tip], "have": []}, expect_errors=True)

    assert refused.status_int == 503 and refused.json["error"] == "cache_full", refused.body
    assert list(hub.store.iter_digests("mpacks")) == [old["mpack_id"][-64:]]
    assert app.get(old["mpack_url"].replace("http://hub.test", "")).status_int == 200
