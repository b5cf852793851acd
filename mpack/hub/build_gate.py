"""What a request may cost in pack builds: how many run at once, and how much disk they may take.

A cache miss of ``POST fetch/mpack`` builds a pack, and an anonymous client
may ask for any commit of a public repository: each new commit id is a miss
(seconds of CPU and disk, and a pack as large as the history's blobs, kept
until GC). So, per process:

- at most ``request_builds`` builds for requests run at once (by default one
  less than the worker's threads, so a thread is always left for cache hits,
  ``/healthz`` and downloads); a miss that finds them all taken waits up to
  ``SLOT_WAIT`` for one, and is answered 503 ``busy`` (``Retry-After: 1``)
  otherwise;
- of those, at most ``request_builds_per_client`` for one client (a user, or
  an anonymous address: ``mpack/http/clients.py``); a client's further miss
  is answered 503 ``busy`` at once, without waiting — so one client looping
  over commits cannot take every builder from the others, nor hold threads
  waiting for its own;
- a request's build may not leave the store's filesystem with less than
  ``build_min_free_percent`` of its size free: packs are a cache, while a
  push that finds no disk fails (507) — the disk's last percent is for
  pushes. A build that would go below first has the cache make room
  (``make_room``, given by the hub: ``gc.make_room`` deletes stale rows'
  packs, then least recently used ones no live URL can come from), one
  build at a time; if that is not enough it is refused, 503 ``cache_full``
  (``Retry-After: 60``). A store without a local disk (a bucket) has no such
  check.

Prebuild jobs are not gated: there are ``job_threads`` of them per worker,
and they build only what a push made (branch heads), so an authenticated
writer bounds them. Followers of a build already running (``SingleFlight``)
wait for it without a slot.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

from mpack.hub.errors import CacheFull
from mpack.hub.settings import Settings
from mpack.hub.slots import Slots
from storage.base import Store

SLOT_WAIT = 2.0  # seconds a request's build waits for a builder before 503


class BuildGate:
    """The per-process bounds on builds for requests (see the module docstring)."""

    def __init__(self, settings: Settings, store: Store, *, slot_wait: float = SLOT_WAIT,
                 make_room: Callable[[int], object] | None = None) -> None:
        self._builders = Slots(settings.request_builds, settings.request_builds_per_client, wait=slot_wait,
                               noun="pack builder")
        self._reserve_percent = settings.build_min_free_percent
        self._store = store
        self._make_room = make_room  # called with the bytes missing; frees what it can
        self._making_room = threading.Lock()  # one build evicts at a time; the next sees what it freed

    def slot(self, client: str | None = None) -> AbstractContextManager[None]:
        """Hold one of the request builders for the ``with`` block → ServerBusy if none frees up in time,
        or at once if ``client`` (None: not counted per client) already has its share."""
        return self._builders.held(client)

    def check_room(self, pack_bytes: int) -> None:
        """Make room for about ``pack_bytes`` above the reserve if need be → CacheFull if there is none."""
        if self._shortfall(pack_bytes) <= 0:
            return
        if self._make_room is not None:
            with self._making_room:
                missing = self._shortfall(pack_bytes)
                if missing > 0:
                    self._make_room(missing)
        missing = self._shortfall(pack_bytes)
        if missing > 0:
            free, _ = self._store.disk_space()
            raise CacheFull(f"the pack cache may not take the last {self._reserve_percent} % of the disk "
                            f"({free} bytes free, this pack needs ~{pack_bytes}) and no cached pack is idle "
                            f"enough to evict; retry later")

    def _shortfall(self, pack_bytes: int) -> int:
        """Bytes the disk lacks to take ``pack_bytes`` and keep its reserve (<= 0: none; 0 without a disk)."""
        space = self._store.disk_space() if self._reserve_percent else None
        if space is None:
            return 0
        free, total = space
        return total * self._reserve_percent // 100 - (free - pack_bytes)
