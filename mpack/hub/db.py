"""Opening the database and bringing its schema up to date.

SQLite (the default) runs in WAL mode with a busy timeout, foreign keys on and
``synchronous=FULL`` (what was answered as done survives a power loss:
docs/decisions.md); every ``atomic()`` begins ``IMMEDIATE`` so that a
transaction that may write takes the write lock up front instead of failing
with SQLITE_BUSY half way. Connections are per thread and opened lazily, so a
process that forks (gunicorn) never hands one to its children: ``migrate``
closes the connection it used.

PostgreSQL (``postgresql://user:password@host:port/name?option=value``, the
options passed to libpq, ``connect_timeout`` 5 s unless given) runs at READ
COMMITTED, so what SQLite's single writer gave for free is asked for:
``migrate`` holds an advisory lock (many workers and nodes start together),
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
from collections.abc import Callable
from urllib.parse import parse_qsl, unquote, urlparse

import peewee as pw

from mpack.format.errors import MuseError
from mpack.hub import deltas, models, snapshots
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
MIGRATION_LOCK = "mpackhub schema migration"

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


def _v4_gc_runs(db: pw.Database) -> None:
    db.create_tables([models.GcRun], safe=True)


# Epoch-second columns: PostgreSQL's ``real`` (what v1 made of peewee's FloatField) holds
# them to 128 s; ``double precision`` to a microsecond. SQLite's REAL is already 8 bytes.
TIMESTAMP_COLUMNS = {
    "schema_version": ("applied_at",),
    "user": ("created_at",),
    "api_token": ("created_at",),
    "repo": ("created_at",),
    "branch": ("updated_at",),
    "fetch_mpack_cache": ("created_at", "expires_at", "last_used_at"),
    "background_job": ("created_at", "run_after", "locked_until", "finished_at"),
    "health_probe": ("at",),
    "gc_run": ("started_at",),
}


def _v5_double_timestamps(db: pw.Database) -> None:
    if not is_postgres(db):
        return
    for table, columns in TIMESTAMP_COLUMNS.items():
        changes = ", ".join(f'ALTER COLUMN "{column}" TYPE double precision' for column in columns)
        db.execute_sql(f'ALTER TABLE "{table}" {changes}')


def _v6_snapshot_deltas_and_pack_versions(db: pw.Database) -> None:
    """Snapshot deltas (builds read them instead of manifests), the format version of each cached pack,
    and an index for walking the commit graph by generation.

    Rows cached before this carry format version 1: hits refuse them and GC removes them.
    """
    db.create_tables([models.SnapshotDelta], safe=True)
    db.execute_sql('CREATE INDEX IF NOT EXISTS commit_repo_id_generation ON "commit" (repo_id, generation)')
    columns = {column.name for column in db.get_columns("fetch_mpack_cache")}
    if "format_version" not in columns:
        db.execute_sql("ALTER TABLE fetch_mpack_cache ADD COLUMN format_version INTEGER NOT NULL DEFAULT 1")
    deltas.backfill(db)


def _v7_blob_checksums(db: pw.Database) -> None:
    """A CRC-32 per blob row, recorded at push; rows from before keep NULL (builds verify those by sha256)."""
    columns = {column.name for column in db.get_columns("object")}
    if "crc32" not in columns:
        db.execute_sql("ALTER TABLE object ADD COLUMN crc32 BIGINT")


def _v8_snapshot_chain_depths(db: pw.Database) -> None:
    """Each delta's depth in its chain: new snapshots are kept in full only every so many (``snapshots``).

    Every record stored before this is kept in full: depth 0, the default.
    """
    columns = {column.name for column in db.get_columns("snapshot_delta")}
    if "depth" not in columns:
        db.execute_sql("ALTER TABLE snapshot_delta ADD COLUMN depth INTEGER NOT NULL DEFAULT 0")


def _v9_compact_snapshot_records(db: pw.Database) -> None:
    """Records written before chain depths existed, kept as deltas where a chain does not start
    (``snapshots.compact``): a 1x bench history's SQLite file held 172.6 MB of them, 9.3 MB after VACUUM.
    The file keeps its size until VACUUM; new rows reuse the pages freed meanwhile."""
    dropped = snapshots.compact_all()
    if dropped:
        log.info("snapshot records compacted", extra={"records_kept_as_deltas": dropped})


# Each entry upgrades the schema from version i to i+1. Append, never edit.
MIGRATIONS: list[Callable[[pw.Database], None]] = [
    _v1_create_tables, _v2_usernames_unique_without_case, _v3_health_probe, _v4_gc_runs, _v5_double_timestamps,
    _v6_snapshot_deltas_and_pack_versions, _v7_blob_checksums, _v8_snapshot_chain_depths,
    _v9_compact_snapshot_records,
]
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(db: pw.Database) -> int:
    if not db.table_exists("schema_version"):
        return 0
    row = models.SchemaVersion.select(pw.fn.MAX(models.SchemaVersion.version)).scalar()
    return int(row or 0)


def migrate(db: pw.Database, clock: Callable[[], float] = time.time, *, upto: int | None = None) -> int:
    """Create or upgrade the schema under a recorded version; safe to run from many workers and nodes at once.

    ``upto`` stops at that version (tests build the previous schema with it). Returns the version reached.
    """
    target_version = SCHEMA_VERSION if upto is None else upto
    db.connect(reuse_if_open=True)
    try:
        with db.atomic():
            xact_lock(db, MIGRATION_LOCK)  # PostgreSQL: the second worker waits, then finds the schema done
            version = current_version(db)
            if version > SCHEMA_VERSION:
                raise MuseError(f"database schema version {version} is newer than this mpackhub ({SCHEMA_VERSION})")
            for target in range(version, target_version):
                MIGRATIONS[target](db)
                models.SchemaVersion.create(version=target + 1, applied_at=clock())
                log.info("schema upgraded", extra={"schema_version": target + 1})
        return max(version, target_version)
    finally:
        db.close()


def migrate_when_reachable(db: pw.Database, clock: Callable[[], float] = time.time, *, wait: float = 0.0,
                           pause: Callable[[float], None] = time.sleep,
                           monotonic: Callable[[], float] = time.monotonic) -> int:
    """``migrate``, retried for up to ``wait`` seconds while a PostgreSQL server refuses connections.

    A hub started before its database (a compose file, a reboot) or a worker that gunicorn restarts
    during an outage then waits for it instead of failing to boot, which stops gunicorn. SQLite is
    never retried: its errors here are a wrong path or permissions.
    """
    if not is_postgres(db):
        return migrate(db, clock)
    deadline, delay = monotonic() + wait, 0.25
    while True:
        try:
            return migrate(db, clock)
        except CONNECTION_ERRORS as exc:
            discard_connection(db)
            if monotonic() + delay > deadline:
                raise
            log.warning("database unreachable at start; retrying", extra={"retry_in_s": delay, "error": str(exc)[:200]})
            pause(delay)
            delay = min(delay * 2, 5.0)

