"""The hub: the services one running mpackhub is made of, passed to every domain call.

``Hub`` is built once per process by ``build_hub(settings)`` (or by a test with
its own temp directory) and handed to ``create_app``; domain functions take it
as their first argument, the way the seed's functions take a session.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import peewee as pw

from mpack import db as dbmod
from mpack.pool import JobPool
from mpack.settings import Settings
from mpack.singleflight import SingleFlight
from storage import LocalStore, UrlSigner
from storage.base import Store


@dataclass
class Hub:
    settings: Settings
    db: pw.Database
    store: Store
    clock: Callable[[], float] = time.time
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("mpackhub"))
    pool: JobPool | None = None
    flights: SingleFlight | None = None  # coalesces identical pack builds

    def __post_init__(self) -> None:
        if self.flights is None:
            self.flights = SingleFlight(self.settings.home / "locks")

    def now(self) -> float:
        return self.clock()

    def start_pool(self) -> None:
        """Start this process's job threads (gunicorn post_fork, ``mpackhub serve``)."""
        if self.pool is None and self.settings.job_threads > 0:
            self.pool = JobPool(self, threads=self.settings.job_threads)
            self.pool.start()

    def stop_pool(self, timeout: float = 30.0) -> None:
        if self.pool is not None:
            self.pool.stop(timeout)
            self.pool = None


def build_hub(settings: Settings, *, clock: Callable[[], float] = time.time) -> Hub:
    """Open the database (migrating it) and the store named by ``settings``."""
    settings.store_root.mkdir(parents=True, exist_ok=True)
    database = dbmod.open_database(settings.database_url)
    dbmod.migrate(database, clock)
    signer = UrlSigner(settings.signing_keys, base_url=settings.public_url, max_ttl=settings.url_ttl_max, clock=clock)
    store = LocalStore(settings.store_root, signer)
    return Hub(settings=settings, db=database, store=store, clock=clock)
