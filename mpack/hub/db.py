"""Opening the database and bringing its schema up to date.

SQLite (the default) runs in WAL mode with a busy timeout, foreign keys on and
``synchronous=NORMAL``; every ``atomic()`` begins ``IMMEDIATE`` so that a
transaction that may write takes the write lock up front instead of failing
with SQLITE_BUSY half way. Connections are per thread and opened lazily, so a
process that forks (gunicorn) never hands one to its children: ``migrate``
closes the connection it used.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from urllib.parse import urlparse

import peewee as pw

from mpack.format.errors import MuseError
from mpack.hub import models
from mpack.hub.errors import DatabaseFull

log = logging.getLogger(__name__)

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "busy_timeout": 5000,
    "synchronous": "normal",
    "foreign_keys": 1,
    "journal_size_limit": 64 * 1024 * 1024,
    "cache_size": -16 * 1024,
}


PG_DISK_FULL = "53100"  # SQLSTATE disk_full
PROBE_BUSY_TIMEOUT_MS = 1000
PROBE_PAD = 16 * 1024  # a few pages: the probe must allocate, as real writes do


class DatabaseUrlError(MuseError):
    code = "database_url"


class HubSqliteDatabase(pw.SqliteDatabase):
    """SQLite that does not mask a full disk behind "cannot rollback".

    On SQLITE_FULL (and I/O errors) SQLite may roll the transaction back by
    itself; peewee's ROLLBACK then fails with "no transaction is active" and
    that error replaces the real one. Rolling back nothing is a no-op here.
    """

    def rollback(self):
        if not self.is_closed() and not self.connection().in_transaction:
            return None
        return super().rollback()

    def savepoint(self):
        return _Savepoint(self)


class _Savepoint(pw._savepoint):
    """A savepoint whose rollback is a no-op once SQLite has rolled the whole transaction back."""

    def rollback(self, begin=True):
        if not self.db.is_closed() and not self.db.connection().in_transaction:
            return
        super().rollback(begin)


def _causes(exc: BaseException):
    """The exception, the driver errors peewee wrapped, and what they were raised from or during."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        cause = pending.pop()
        if cause is None or id(cause) in seen or len(seen) > 20:
            continue
        seen.add(id(cause))
        yield cause
        pending.extend((getattr(cause, "orig", None), cause.__cause__, cause.__context__))


def is_disk_full(exc: BaseException) -> bool:
    """True when a database error means "no space left" (SQLITE_FULL, PostgreSQL disk_full)."""
    return any(getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
               or getattr(cause, "pgcode", None) == PG_DISK_FULL for cause in _causes(exc))


@contextlib.contextmanager
def disk_full_as_error():
    """Turn a database's "disk full" into ``DatabaseFull`` (507); other errors pass unchanged."""
    try:
        yield
    except pw.DatabaseError as exc:
        if is_disk_full(exc):
            raise DatabaseFull() from exc
        raise


def probe_write(db: pw.Database) -> None:
    """Commit (then delete) a row that allocates pages: DatabaseFull if the database cannot grow.

    A busy database is not a failing one: the probe waits at most a second, and
    a lock still held then counts as success (someone else is writing).
    """
    sqlite = isinstance(db, pw.SqliteDatabase)
    if sqlite:
        db.execute_sql(f"PRAGMA busy_timeout = {PROBE_BUSY_TIMEOUT_MS}")
    try:
        with disk_full_as_error(), db.atomic():
            models.HealthProbe.insert(at=time.time(), pad=b"\0" * PROBE_PAD).execute()
            models.HealthProbe.delete().execute()
    except pw.OperationalError as exc:
        if getattr(getattr(exc, "orig", None), "sqlite_errorcode", None) not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise
    finally:
        if sqlite:
            db.execute_sql(f"PRAGMA busy_timeout = {SQLITE_PRAGMAS['busy_timeout']}")


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///PATH`` URL (``":memory:"`` for none); None for other databases."""
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
        return None
    return (url[len("sqlite:///"):] if url.startswith("sqlite:///") else parsed.path) or ":memory:"


def open_database(url: str) -> pw.Database:
    """Build (not connect) the database named by ``url`` and bind the models to it."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = sqlite_path(url)
        _private_sqlite_files(path)
        db: pw.Database = HubSqliteDatabase(path, pragmas=SQLITE_PRAGMAS, lock_type="IMMEDIATE")
    elif parsed.scheme in ("postgres", "postgresql"):
        db = pw.PostgresqlDatabase(
            parsed.path.lstrip("/"), user=parsed.username, password=parsed.password,
            host=parsed.hostname, port=parsed.port or 5432,
        )
    else:
        raise DatabaseUrlError(f"unsupported database URL scheme {parsed.scheme!r} (sqlite:/// or postgresql://)")
    models.database.initialize(db)
    return db


def _private_sqlite_files(path: str) -> None:
    """Create the database file 0600 (SQLite gives its -wal and -shm files the same mode)."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    with contextlib.suppress(FileNotFoundError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, path + "-wal", path + "-shm", path + "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(name, 0o600)


def _v1_create_tables(db: pw.Database) -> None:
    db.create_tables(models.ALL_MODELS, safe=True)
    # One pending job per (repo, type): a burst of pushes merges into it (jobs.enqueue).
    db.execute_sql(
        "CREATE UNIQUE INDEX IF NOT EXISTS background_job_one_pending "
        "ON background_job (repo_id, job_type) WHERE status = 'pending'"
    )


def _v2_usernames_unique_without_case(db: pw.Database) -> None:
    # "Alice" and "alice" would be two owners whose URLs differ only by case.
    clashes = list(db.execute_sql('SELECT lower(username) FROM "user" GROUP BY lower(username) HAVING COUNT(*) > 1'))
    if clashes:
        names = ", ".join(row[0] for row in clashes[:10])
        raise MuseError(f"usernames that differ only by case must be merged or renamed before upgrading: {names}")
    db.execute_sql('CREATE UNIQUE INDEX IF NOT EXISTS user_username_nocase ON "user" (lower(username))')


def _v3_health_probe(db: pw.Database) -> None:
    db.create_tables([models.HealthProbe], safe=True)


# Each entry upgrades the schema from version i to i+1. Append, never edit.
MIGRATIONS: list[Callable[[pw.Database], None]] = [
    _v1_create_tables, _v2_usernames_unique_without_case, _v3_health_probe,
]
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(db: pw.Database) -> int:
    if not db.table_exists("schema_version"):
        return 0
    row = models.SchemaVersion.select(pw.fn.MAX(models.SchemaVersion.version)).scalar()
    return int(row or 0)


def migrate(db: pw.Database, clock: Callable[[], float] = time.time) -> int:
    """Create or upgrade the schema under a recorded version; safe to run from many workers at once."""
    db.connect(reuse_if_open=True)
    try:
        with db.atomic():
            version = current_version(db)
            if version > SCHEMA_VERSION:
                raise MuseError(f"database schema version {version} is newer than this mpackhub ({SCHEMA_VERSION})")
            for target in range(version, SCHEMA_VERSION):
                MIGRATIONS[target](db)
                models.SchemaVersion.create(version=target + 1, applied_at=clock())
                log.info("schema upgraded", extra={"schema_version": target + 1})
        return SCHEMA_VERSION
    finally:
        db.close()
