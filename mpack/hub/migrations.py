"""The schema's versions: each migration, and applying them under a recorded version.

``migrate`` runs every migration the database lacks, in order, in one
transaction, and records each version reached (``schema_version``). Many
workers and nodes may start at once: on PostgreSQL an advisory lock makes the
others wait and then find the schema done; on SQLite the IMMEDIATE
transaction does the same. A database newer than this code is refused.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import peewee as pw

from mpack.format.errors import MuseError
from mpack.hub import deltas, models, snapshots
from mpack.hub.db import CONNECTION_ERRORS, discard_connection, is_postgres, xact_lock

log = logging.getLogger(__name__)

MIGRATION_LOCK = "mpackhub schema migration"


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

