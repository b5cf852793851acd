"""The hub's composition root: open the database and store, wire the job handlers."""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from mpack.hub import db as dbmod
from mpack.hub import gc, migrations
from mpack.hub.build_gate import BuildGate
from mpack.hub.errors import NoHub
from mpack.hub.handlers import production_registry
from mpack.hub.metrics import HubMetrics
from mpack.hub.pool import JobPool
from mpack.hub.services import Hub
from mpack.hub.settings import Settings, database_url_of, home_of
from storage import LocalStore, Store, UrlSigner
from storage.s3 import S3Store
from storage.s3_client import make_client, parse_store_url


def production_pool(hub: Hub) -> JobPool:
    return JobPool(hub, threads=hub.settings.job_threads, registry=production_registry())


PRIVATE_DIR = 0o700


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if needed and make it readable by its owner only."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)


def open_store(settings: Settings, signer: UrlSigner, *, clock: Callable[[], float] = time.time) -> Store:
    """The store ``MPACKHUB_STORE_URL`` names: a local directory, or an S3-compatible bucket."""
    if settings.store_kind == "s3":
        client = make_client(endpoint_url=settings.s3_endpoint_url or None, region=settings.s3_region or None,
                             pool_size=max(10, settings.job_threads * 4 + 16))
        return S3Store(client, parse_store_url(settings.store_url), signer, clock=clock)
    private_dir(settings.store_root)
    return LocalStore(settings.store_root, signer, quarantine_root=settings.home / "quarantine",
                      batch_sync=settings.store_sync)


def build_hub(settings: Settings, *, clock: Callable[[], float] = time.time) -> Hub:
    """Open the database (migrating it) and the store named by ``settings``.

    The home directory and what the hub keeps in it (database, store, secrets,
    locks) are private to the user running the hub: 0700 directories, 0600 files.
    """
    private_dir(settings.home)
    database = dbmod.open_database(settings.database_url)
    migrations.migrate_when_reachable(database, clock, wait=settings.database_wait)
    signer = UrlSigner(settings.signing_keys, base_url=settings.public_url, max_ttl=settings.url_ttl_max, clock=clock)
    store = open_store(settings, signer, clock=clock)
    # A request's build at the disk's reserve first has the cache evict what it can (gc.make_room).
    gate = BuildGate(settings, store, make_room=lambda need_bytes: gc.make_room(hub, need_bytes))
    hub = Hub(settings=settings, db=database, store=store, clock=clock, pool_factory=production_pool,
              metrics=HubMetrics(settings.metrics_dir), build_gate=gate)
    return hub


def existing_settings(environ: Mapping[str, str]) -> Settings:
    """Settings of the hub the environment names, refusing (``NoHub``) when none is there.

    Unlike ``Settings.from_env`` (which generates secrets in a new home), this
    creates nothing: the home must be a directory and, with SQLite, hold the
    database file that ``mpackhub serve`` created.
    """
    home = home_of(environ)
    if not home.is_dir():
        raise NoHub(home, "no such directory")
    database = dbmod.sqlite_path(database_url_of(environ, home))
    if database is not None and (database == ":memory:" or not Path(database).is_file()):
        raise NoHub(home, f"no database {database}")
    return Settings.from_env(environ)
