"""The hub: the services one running mpackhub is made of, passed to every domain call.

``Hub`` is built once per process by ``mpack.hub.bootstrap.build_hub(settings)``
(or by a test with its own temp directory) and handed to ``create_app``; domain
functions take it as their first argument, the way the seed's functions take a
session. It holds services only: which job handlers run is decided where the
hub is assembled (``pool_factory``), so no domain module imports the pool.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import peewee as pw

from mpack.hub.build_gate import BuildGate
from mpack.hub.metrics import HubMetrics
from mpack.hub.settings import Settings
from mpack.hub.singleflight import SingleFlight
from mpack.hub.slots import Slots
from storage.base import Store


class JobRunner(Protocol):
    """What the hub needs of its job pool: start it, stop it, wake it for new work."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 30.0) -> None: ...

    def wake(self) -> None: ...


@dataclass
class Hub:
    settings: Settings
    db: pw.Database
    store: Store
    clock: Callable[[], float] = time.time
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("mpackhub"))
    pool: JobRunner | None = None
    flights: SingleFlight | None = None  # coalesces identical pack builds
    pool_factory: Callable[[Hub], JobRunner] | None = None  # set by build_hub
    metrics: HubMetrics = field(default_factory=HubMetrics)  # in-process unless build_hub says otherwise
    build_gate: BuildGate | None = None  # bounds the builds requests start (made from settings if None)
    download_slots: Slots | None = None  # bounds the downloads served at once (made from settings if None)

    def __post_init__(self) -> None:
        if self.flights is None:
            self.flights = SingleFlight(self.settings.home / "locks", self.db)
        if self.build_gate is None:
            self.build_gate = BuildGate(self.settings, self.store)
        if self.download_slots is None:
            # No wait: a download holds its thread while the client reads, so a refusal must cost nothing.
            self.download_slots = Slots(self.settings.downloads, self.settings.downloads_per_client, wait=0,
                                        noun="download slot")

    def now(self) -> float:
        return self.clock()

    def start_pool(self) -> None:
        """Start this process's job threads (gunicorn post_fork, ``mpackhub serve``)."""
        if self.pool is None and self.pool_factory is not None and self.settings.job_threads > 0:
            self.pool = self.pool_factory(self)
            self.pool.start()

    def stop_pool(self, timeout: float = 30.0) -> None:
        if self.pool is not None:
            self.pool.stop(timeout)
            self.pool = None
