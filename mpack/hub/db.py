"""Opening the database and bringing its schema up to date.

SQLite (the default) runs in WAL mode with a busy timeout, foreign keys on and
``synchronous=NORMAL``; every ``atomic()`` begins ``IMMEDIATE`` so that a
transaction that may write takes the write lock up front instead of failing
with SQLITE_BUSY half way. Connections are per thread and opened lazily, so a
process that forks (gunicorn) never hands one to its children: ``migrate``
closes the connection it used.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlparse

import peewee as pw

from mpack.format.errors import MuseError
from mpack.hub import models

log = logging.getLogger(__name__)

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "busy_timeout": 5000,
    "synchronous": "normal",
    "foreign_keys": 1,
    "journal_size_limit": 64 * 1024 * 1024,
    "cache_size": -16 * 1024,
}


class DatabaseUrlError(MuseError):
    code = "database_url"


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
        db: pw.Database = pw.SqliteDatabase(sqlite_path(url), pragmas=SQLITE_PRAGMAS, lock_type="IMMEDIATE")
    elif parsed.scheme in ("postgres", "postgresql"):
        db = pw.PostgresqlDatabase(
            parsed.path.lstrip("/"), user=parsed.username, password=parsed.password,
            host=parsed.hostname, port=parsed.port or 5432,
        )
    else:
        raise DatabaseUrlError(f"unsupported database URL scheme {parsed.scheme!r} (sqlite:/// or postgresql://)")
    models.database.initialize(db)
    return db


def _v1_create_tables(db: pw.Database) -> None:
    db.create_tables(models.ALL_MODELS, safe=True)
    # One pending job per (repo, type): a burst of pushes merges into it (jobs.enqueue).
    db.execute_sql(
        "CREATE UNIQUE INDEX IF NOT EXISTS background_job_one_pending "
        "ON background_job (repo_id, job_type) WHERE status = 'pending'"
    )


# Each entry upgrades the schema from version i to i+1. Append, never edit.
MIGRATIONS: list[Callable[[pw.Database], None]] = [_v1_create_tables]
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
