"""Leaks and exposure (issue 9, item 9): lock files swept, a private home, one token spelling, usernames without case."""
from __future__ import annotations

import fcntl
import os
import stat
from urllib.parse import parse_qs, urlsplit

import peewee as pw
import pytest
import webtest

from app import create_app
from mpack.format.errors import MuseError
from mpack.hub import db as dbmod
from mpack.hub import fetch, gc, migrations, singleflight
from mpack.hub.bootstrap import build_hub
from mpack.hub.models import User
from mpack.hub.settings import Settings
from storage.errors import InvalidUrlToken
from tests.database import POSTGRES
from tests.factories import History, error_of, make_repo, make_user, push_history

only_sqlite_lock_files = pytest.mark.skipif(
    POSTGRES, reason="lock files are single flight on SQLite; on PostgreSQL it is an advisory lock (tests/test_postgres.py)")

PATH = "/gabriel/song"


def lock_files(hub) -> list[str]:
    return sorted(p.name for p in (hub.settings.home / "locks").glob("*.lock"))


@only_sqlite_lock_files
def test_gc_removes_the_lock_files_builds_leave(hub, app, owner, repo):
    h = History().linear(3)
    push_history(app, owner[1], PATH, h)
    for n in range(3):  # three keys: a clone and two deltas
        fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[h.commits[n]["commit_id"]] if n else [])
    assert len(lock_files(hub)) == 3

    report = gc.run_gc(hub)

    assert report.locks_removed == 3
    assert lock_files(hub) == []
    fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[h.commits[0]["commit_id"], h.commits[1]["commit_id"]])


@only_sqlite_lock_files
def test_gc_keeps_a_lock_file_a_build_holds(hub):
    with hub.flights._process_lock("busy"):
        assert hub.flights.sweep() == 0
        assert len(lock_files(hub)) == 1
    assert hub.flights.sweep() == 1


def test_a_lock_taker_that_loses_its_file_to_the_sweep_locks_the_new_one(hub, monkeypatch):
    flights = hub.flights
    path = flights.lock_dir / ("ab" * 32 + ".lock")
    real_flock = fcntl.flock
    swept = []

    def sweep_between_open_and_lock(fd, op):
        if not swept:  # the sweep unlinks the file this taker has opened but not yet locked
            swept.append(os.fstat(fd).st_ino)
            os.unlink(path)
        return real_flock(fd, op)

    monkeypatch.setattr(singleflight.fcntl, "flock", sweep_between_open_and_lock)
    fd = flights._take(path)
    try:
        assert swept and os.path.exists(path)
        assert os.fstat(fd).st_ino == os.stat(path).st_ino  # it holds the file others will open
    finally:
        os.close(fd)


# -- a private home ----------------------------------------------------------------------

def modes_under(home) -> dict[str, int]:
    found = {}
    for top, dirs, files in os.walk(home):
        for name in dirs + files:
            path = os.path.join(top, name)
            found[os.path.relpath(path, home)] = stat.S_IMODE(os.lstat(path).st_mode)
    found["."] = stat.S_IMODE(os.stat(home).st_mode)
    return found


def test_the_home_and_everything_under_it_is_private(tmp_path):
    old = os.umask(0o022)  # the usual umask: what the hub makes must not depend on it
    try:
        hub = build_hub(Settings.for_home(tmp_path / "hub", public_url="http://hub.test", job_threads=0))
        app = webtest.TestApp(create_app(hub))
        _, token = make_user(hub, "gabriel")
        repo = make_repo(hub, None, "song", "private")
        h = History().linear(2)
        push_history(app, token, PATH, h)
        fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])
        hub.db.close()
    finally:
        os.umask(old)
    modes = modes_under(tmp_path / "hub")
    assert {"mpackhub.sqlite3", "secrets.json", "store", "locks"} <= set(modes)
    assert any(name.startswith("store/blobs/") for name in modes) and any(n.startswith("store/mpacks/") for n in modes)
    loose = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o700 if os.path.isdir(tmp_path / "hub" / name) else 0o600)}
    assert loose == {}


def test_an_existing_world_readable_home_is_made_private(tmp_path):
    home = tmp_path / "hub"
    build_hub(Settings.for_home(home, job_threads=0)).db.close()
    os.chmod(home, 0o755)
    os.chmod(home / "mpackhub.sqlite3", 0o644)
    build_hub(Settings.for_home(home, job_threads=0)).db.close()
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home / "mpackhub.sqlite3").st_mode) == 0o600


# -- one spelling per token field ------------------------------------------------------------

def test_an_expiry_with_leading_zeros_does_not_verify(hub, app):
    signer = hub.store.signer
    path = "/mpacks/" + "ab" * 32
    params = signer.sign("GET", path, 600)
    signer.verify("GET", path, params)
    for spelled in ("0" + params["expires"], "000" + params["expires"]):
        with pytest.raises(InvalidUrlToken, match="expires"):
            signer.verify("GET", path, {**params, "expires": spelled})


def test_a_download_url_with_a_zero_padded_expiry_is_403(hub, app, owner, repo):
    h = History().linear(1)
    push_history(app, owner[1], PATH, h)
    url = fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])["mpack_url"]
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert app.get(parts.path, params=query, status=200)
    query["expires"] = "0" + query["expires"]
    assert error_of(app.get(parts.path, params=query, expect_errors=True), 403)["error"] == "invalid_url_token"


# -- usernames unique without regard to case ---------------------------------------------------

def test_a_username_differing_only_by_case_is_409(hub, app):
    admin = {"Authorization": f"Bearer {hub.settings.admin_token}"}
    app.post_json("/admin/users", {"username": "alice"}, headers=admin, status=201)
    response = app.post_json("/admin/users", {"username": "Alice"}, headers=admin, expect_errors=True)
    assert error_of(response, 409)["error"] == "already_exists"
    assert [u.username for u in User.select()] == ["alice"]


def v1_database(tmp_path, names: list[str]) -> pw.Database:
    db = dbmod.open_database(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
        patch.setattr(migrations, "SCHEMA_VERSION", 1)
        migrations.migrate(db)
    db.connect(reuse_if_open=True)
    for name in names:
        User.create(username=name, created_at=0.0)
    db.close()
    return db


def test_the_migration_adds_a_case_blind_unique_index(tmp_path):
    db = v1_database(tmp_path, ["alice", "bob"])
    assert migrations.migrate(db) == migrations.SCHEMA_VERSION
    db.connect(reuse_if_open=True)
    with pytest.raises(pw.IntegrityError):
        User.create(username="ALICE", created_at=0.0)
    db.close()


def test_the_migration_names_usernames_that_clash_by_case(tmp_path):
    db = v1_database(tmp_path, ["alice", "Alice", "bob"])
    with pytest.raises(MuseError, match="alice"):
        migrations.migrate(db)
    assert migrations.current_version(db) == 1
