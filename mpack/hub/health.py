"""``GET /healthz``: the database answers and the store is writable."""
from __future__ import annotations

from typing import TYPE_CHECKING

from mpack.hub.db import SCHEMA_VERSION, current_version

if TYPE_CHECKING:
    from mpack.hub.services import Hub


def health(hub: Hub) -> dict:
    version = current_version(hub.db)
    store_ok = hub.store.writable()
    ok = version == SCHEMA_VERSION and store_ok
    return {"status": "ok" if ok else "degraded", "schema_version": version, "store_writable": store_ok,
            "job_pool": "running" if hub.pool is not None else "off"}
