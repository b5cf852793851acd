"""Opening the database: its settings, its errors, the locks writers take (the schema: ``migrations``).

SQLite (the default) runs in WAL mode with a busy timeout, foreign keys on and
``synchronous=FULL`` (what was answered as done survives a power loss:
docs/decisions.md); every ``atomic()`` begins ``IMMEDIATE`` so that a
transaction that may write takes the write lock up front instead of failing
with SQLITE_BUSY half way. Connections are per thread and opened lazily, so a
process that forks (gunicorn) never hands one to its children:
``migrations.migrate`` closes the connection it used.

PostgreSQL (``postgresql://user:password@host:port/name?option=value``, the
options passed to libpq, ``connect_timeout`` 5 s unless given) runs at READ
COMMITTED, so what SQLite's single writer gave for free is asked for:
``migrations.migrate`` holds an advisory lock (many workers and nodes start together),
``xact_lock`` serialises writers on one key for the rest of a transaction, and
``for_update`` adds ``FOR UPDATE`` to a read that a write will follow. On
SQLite both are no-ops: an IMMEDIATE transaction already excludes every other
writer. A connection that failed (server restarted) is dropped by
``discard_connection``; the next query opens a fresh one.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import time
from urllib.parse import parse_qsl, unquote, urlparse

import peewee as pw

from mpack.format.errors import MuseError
from mpack.hub import models
from mpack.hub.errors import DatabaseFull

log = logging.getLogger(__name__)

# Applied in this order on every connection: busy_timeout first, so that switching a fresh
# database to WAL (which takes an exclusive lock) waits for a worker starting alongside instead
# of failing at once with "database is locked".
SQLITE_PRAGMAS = {
    "busy_timeout": 5000,
    "journal_mode": "wal",
    "synchronous": "full",
    "foreign_keys": 1,
    "journal_size_limit": 64 * 1024 * 1024,
    "cache_size": -16 * 1024,
}


PG_CONNECT_TIMEOUT = 5  # seconds: a database that does not answer fails requests fast (503), not after minutes

# What a lost or refused connection raises: answered 503, and the connection is dropped.
CONNECTION_ERRORS = (pw.OperationalError, pw.InterfaceError)

PG_DISK_FULL = "53100"  # SQLSTATE disk_full
PROBE_BUSY_TIMEOUT_MS = 1000
PROBE_PAD = 16 * 1024  # a few pages: the probe must allocate, as real writes do


class DatabaseUrlError(MuseError):
    code = "database_url"


class HubSqliteDatabase(pw.SqliteDatabase):
    """SQLite that does not mask a full disk behind "cannot rollback", and opens a fresh file from many workers.

    On SQLITE_FULL (and I/O errors) SQLite may roll the transaction back by
    itself; peewee's ROLLBACK then fails with "no transaction is active" and
    that error replaces the real one. Rolling back nothing is a no-op here.

    Switching a fresh database to WAL needs an exclusive lock, and SQLite answers
    SQLITE_BUSY at once, without its busy handler (waiting could deadlock), to a
    connection that loses that race: the pragmas are retried for the busy timeout.
    """

    def _set_pragmas(self, conn):
        deadline = time.monotonic() + SQLITE_PRAGMAS["busy_timeout"] / 1000
        while True:
            try:
                return super()._set_pragmas(conn)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

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
        options: dict[str, object] = {"connect_timeout": PG_CONNECT_TIMEOUT, "application_name": "mpackhub"}
        options.update(parse_qsl(parsed.query))
        db = pw.PostgresqlDatabase(
            unquote(parsed.path.lstrip("/")), user=unquote(parsed.username or "") or None,
            password=unquote(parsed.password or "") or None, host=parsed.hostname, port=parsed.port or 5432,
            **options,
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


def is_postgres(db: pw.Database) -> bool:
    return isinstance(db, pw.PostgresqlDatabase)


def advisory_key(name: str) -> int:
    """A signed 64-bit key for PostgreSQL's advisory locks, from a name."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


def xact_lock(db: pw.Database, name: str) -> None:
    """Inside a transaction: wait for, then hold until commit, the lock named ``name`` (PostgreSQL).

    On SQLite a write transaction already holds the database's one write lock.
    """
    if is_postgres(db):
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (advisory_key(name),))


def for_update(db: pw.Database, query: pw.Select) -> pw.Select:
    """``query … FOR UPDATE`` where rows can be locked (PostgreSQL); SQLite's writer lock covers it."""
    return query.for_update() if is_postgres(db) else query


def discard_connection(db: pw.Database) -> None:
    """Drop this thread's connection after an error that may have broken it.

    The next query opens a new one (peewee connects on demand), so a hub rides
    out a database restart without being restarted itself.
    """
    if db.is_closed():
        return
    try:
        db.close()
    except pw.PeeweeException:  # refused mid-transaction, or already gone: close the driver's handle, forget the state
        raw = getattr(db._state, "conn", None)  # peewee has no public way to close a connection it refuses to
        try:
            if raw is not None:
                raw.close()
        finally:
            db.dispose()


def is_connection_error(exc: BaseException) -> bool:
    """A refused, lost or unusable connection (not a full disk, which is also an OperationalError)."""
    return isinstance(exc, CONNECTION_ERRORS) and not is_disk_full(exc)


def discard_after(db: pw.Database, exc: BaseException) -> None:
    """Drop this thread's connection if ``exc`` says it is broken; keep it otherwise."""
    if is_connection_error(exc):
        discard_connection(db)
