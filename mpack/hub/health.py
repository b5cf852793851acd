"""``GET /healthz``: the database answers, and both it and the store can take a write right now.

Each check writes for real (a row that allocates pages, committed then deleted;
a 4 KiB temp file, fsynced then removed), so a full disk or a database at its
size limit reports ``degraded`` (503) while reads may still work.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import peewee as pw

from mpack.hub import db as dbmod
from mpack.hub.errors import StorageError

if TYPE_CHECKING:
    from mpack.hub.services import Hub


def _database_writable(hub: Hub) -> bool:
    try:
        dbmod.probe_write(hub.db)
    except (StorageError, pw.DatabaseError) as exc:
        hub.log.warning("health: the database cannot take a write", extra={"error": type(exc).__name__})
        dbmod.discard_after(hub.db, exc)  # a broken connection: the next check opens a fresh one
        return False
    return True


def _store_writable(hub: Hub) -> bool:
    try:
        hub.store.probe_write()
    except StorageError as exc:
        hub.log.warning("health: the store cannot take a write", extra={"error": exc.code})
        return False
    return True


def writable(hub: Hub) -> bool:
    """Both the database and the store can take a write now."""
    return _database_writable(hub) and _store_writable(hub)


def health(hub: Hub) -> dict:
    try:
        version: int | None = dbmod.current_version(hub.db)
    except pw.DatabaseError as exc:
        dbmod.discard_after(hub.db, exc)
        version = None
    database_ok = version is not None and _database_writable(hub)
    store_ok = _store_writable(hub)
    ok = version == dbmod.SCHEMA_VERSION and database_ok and store_ok
    return {"status": "ok" if ok else "degraded", "schema_version": version, "database_writable": database_ok,
            "store_writable": store_ok, "job_pool": "running" if hub.pool is not None else "off"}
