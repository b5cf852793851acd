"""``GET /healthz``: the database answers, and both it and the store can take a write right now.

Each check writes for real (a row that allocates pages, committed then deleted;
a 4 KiB temp file, fsynced then removed), so a full disk or a database at its
size limit reports ``degraded`` (503) while reads may still work.

The route is anonymous and those two writes are two disk syncs (and the
database's write lock): ``WriteProbes`` lets a process probe at most once per
``health_probe_seconds`` (default 2 s; 0 probes on every request) and answers
the checks in between from the last probe, so a flood of health checks costs
no more than a load balancer's polling. A disk that fills is reported within
that time.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import peewee as pw

from mpack.hub import db as dbmod
from mpack.hub import migrations
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


@dataclass(frozen=True)
class _Probed:
    at: float
    database: bool
    store: bool


class WriteProbes:
    """The last write probes of this process, reused for ``health_probe_seconds`` (see the module docstring).

    One probe runs at a time: checks arriving meanwhile wait for its answer instead of probing too.
    """

    def __init__(self) -> None:
        self._last: _Probed | None = None
        self._lock = threading.Lock()

    def results(self, hub: Hub, *, database: bool = True) -> tuple[bool, bool]:
        """(database writable, store writable): from a probe at most ``health_probe_seconds`` old.
        ``database=False``: the database did not answer a read, so it is not probed (reported False)."""
        with self._lock:
            last, now = self._last, hub.now()
            if last is not None and 0 <= now - last.at < hub.settings.health_probe_seconds:
                return last.database and database, last.store
            probed = _Probed(now, database and _database_writable(hub), _store_writable(hub))
            self._last = probed
            return probed.database, probed.store


def health(hub: Hub, probes: WriteProbes | None = None) -> dict:
    """The report of ``GET /healthz``; ``probes`` reuses recent write probes (None: probe now)."""
    try:
        version: int | None = migrations.current_version(hub.db)
    except pw.DatabaseError as exc:
        dbmod.discard_after(hub.db, exc)
        version = None
    database_ok, store_ok = (probes or WriteProbes()).results(hub, database=version is not None)
    ok = version == migrations.SCHEMA_VERSION and database_ok and store_ok
    return {"status": "ok" if ok else "degraded", "schema_version": version, "database_writable": database_ok,
            "store_writable": store_ok, "job_pool": "running" if hub.pool is not None else "off"}
