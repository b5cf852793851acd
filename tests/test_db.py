"""Migrations on SQLite and PostgreSQL: upgrading a database made by the previous schema, many
processes migrating one database at once, and 8-byte timestamps (run the suite with
``MPACKHUB_TEST_DATABASE=postgresql`` for PostgreSQL)."""
from __future__ import annotations

import hashlib
import multiprocessing

import webtest

from app import create_app
from mpack.hub import db as dbmod
from mpack.hub import migrations
from mpack.hub.bootstrap import build_hub
from mpack.hub.models import BackgroundJob, Repo, SchemaVersion, User
from mpack.hub.settings import Settings
from tests.database import POSTGRES, database_url, only_postgres
from tests.factories import History, push_history, unpack, wire

NOW = 1_800_000_123.456789  # an epoch a 4-byte float cannot hold: multiples of 128 s near it
TOKEN = "mpk_upgrade-test-token-0123456789abcdef"


def _sql(db, statement: str, *params) -> None:
    db.execute_sql(statement.replace("?", db.param), params)


def _rows_of_the_first_schema(db) -> None:
    """Rows in the columns the first schema already had, written as that version's hub wrote them."""
    _sql(db, 'INSERT INTO "user" (username, created_at) VALUES (?, ?)', "gabriel", NOW)
    user_id = db.execute_sql('SELECT id FROM "user" WHERE username = ' + db.param, ("gabriel",)).fetchone()[0]
    _sql(db, "INSERT INTO api_token (token_hash, user_id, label, created_at) VALUES (?, ?, ?, ?)",
         hashlib.sha256(TOKEN.encode()).hexdigest(), user_id, "initial", NOW)
    _sql(db, "INSERT INTO repo (repo_id, owner, name, visibility, domain, created_at) VALUES (?, ?, ?, ?, ?, ?)",
         "r" * 32, "gabriel", "song", "public", "code", NOW)
    _sql(db, "INSERT INTO background_job (job_id, repo_id, job_type, payload, status, created_at, run_after, attempt,"
             " max_attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", "j" * 64, "r" * 32, "test.kept", "{}", "done",
         NOW, NOW, 1, 5)


def _previous_schema(home) -> str:
    """A database at schema version SCHEMA_VERSION - 1 holding rows; returns its URL."""
    url = database_url(home, empty=True)
    db = dbmod.open_database(url)
    assert migrations.migrate(db, upto=migrations.SCHEMA_VERSION - 1) == migrations.SCHEMA_VERSION - 1
    with db.atomic():
        _rows_of_the_first_schema(db)
    db.close()
    return url


def test_a_database_at_the_previous_schema_upgrades_keeping_its_rows(tmp_path):
    home = tmp_path / "hub"
    url = _previous_schema(home)
    hub = build_hub(Settings.for_home(home, database_url=url, public_url="http://hub.test", job_threads=0))
    try:
        versions = [v for (v,) in SchemaVersion.select(SchemaVersion.version).order_by(SchemaVersion.version).tuples()]
        assert versions == list(range(1, migrations.SCHEMA_VERSION + 1))
        assert User.get(User.username == "gabriel").created_at == NOW
        assert Repo.get_by_id("r" * 32).name == "song"
        assert BackgroundJob.get_by_id("j" * 64).status == "done"
        # The upgraded schema works: the old token pushes, the pushed tip is packed and served.
        app = webtest.TestApp(create_app(hub))
        history = History().linear(3)
        push_history(app, TOKEN, "/gabriel/song", history)
        answer = unpack(wire(app, "POST", "/gabriel/song/fetch/mpack", {"want": [history.tip]}, status=200))
        assert answer["commit_count"] == 3
    finally:
        hub.db.close()


@only_postgres
def test_v5_turns_postgres_real_timestamps_into_double_precision(tmp_path):
    """Version 1 made PostgreSQL ``real`` columns (peewee FloatField): rebuild that, then upgrade."""
    url = database_url(tmp_path / "hub", empty=True)
    db = dbmod.open_database(url)
    migrations.migrate(db, upto=1)
    for table, columns in migrations.TIMESTAMP_COLUMNS.items():
        for column in columns if db.table_exists(table) else ():
            db.execute_sql(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE real')
    _rows_of_the_first_schema(db)
    db.close()
    assert migrations.migrate(db) == migrations.SCHEMA_VERSION
    types = dict(db.execute_sql(
        "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'public' AND column_name IN ('created_at', 'expires_at', 'last_used_at',"
        " 'run_after', 'locked_until', 'finished_at', 'updated_at', 'applied_at')").fetchall())
    assert set(types.values()) == {"double precision"}, types
    assert abs(User.get(User.username == "gabriel").created_at - NOW) <= 128  # what real had kept
    User.update(created_at=NOW).execute()
    assert User.get(User.username == "gabriel").created_at == NOW  # now to the microsecond
    db.close()


def test_timestamps_keep_sub_second_precision(hub):
    user = User.create(username="precise", created_at=NOW)
    assert User.get_by_id(user.id).created_at == NOW


def _migrate_in_child(url: str, start, results) -> None:
    db = dbmod.open_database(url)
    start.wait(30)
    try:
        results.put(("ok", migrations.migrate(db)))
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(("error", repr(exc)))


def test_workers_starting_together_migrate_one_fresh_database_once(tmp_path):
    """Four processes (gunicorn workers, or hubs on several nodes) migrate an empty database at once."""
    url = database_url(tmp_path / "hub", empty=True)
    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Barrier(4), spawn.Queue()
    children = [spawn.Process(target=_migrate_in_child, args=(url, start, results)) for _ in range(4)]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(30)
    assert outcomes == [("ok", migrations.SCHEMA_VERSION)] * 4
    db = dbmod.open_database(url)
    versions = [v for (v,) in SchemaVersion.select(SchemaVersion.version).order_by(SchemaVersion.version).tuples()]
    assert versions == list(range(1, migrations.SCHEMA_VERSION + 1))
    db.close()
    assert POSTGRES or url.startswith("sqlite:///")


def test_sqlite_commits_are_durable_when_acknowledged(tmp_path):
    """WAL with synchronous=FULL: a push answered 200 survives a power loss (docs/decisions.md)."""
    db = dbmod.open_database(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    try:
        journal, synchronous = (db.execute_sql(f"PRAGMA {name}").fetchone()[0] for name in ("journal_mode", "synchronous"))
        assert (journal, synchronous) == ("wal", 2)  # 2 = FULL: the WAL is synced at every commit
    finally:
        db.close()
