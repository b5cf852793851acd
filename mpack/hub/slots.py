"""Bounded holders of a worker's threads: so many at once in this process, and so many for one client.

Pack builds for requests (``build_gate``) and pack downloads (``download``)
each hold a worker thread for seconds to minutes. Each kind is bounded per
process (by default one less than the worker's threads, so a thread is
always left for everything else) and per client (a user, or an anonymous
client's address: ``mpack/http/clients.py``), so one client cannot take
every slot from the others. A client past its share is refused at once —
no thread waits on its behalf; a holder that finds every slot taken may wait
``wait`` seconds for one. Refusals are ``ServerBusy`` (503, ``Retry-After``).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mpack.hub.errors import ClientShareTaken, ServerBusy


def client_key(username: str | None, address: str) -> str:
    """Whom a slot is counted against: the user when the request is authenticated, else its address."""
    return f"user:{username}" if username is not None else f"address:{address}"


class Slots:
    """At most ``total`` holders at once, at most ``per_client`` of them one client's (0: no such bound)."""

    def __init__(self, total: int, per_client: int, *, wait: float, noun: str) -> None:
        self._free = threading.BoundedSemaphore(total)
        self._per_client = per_client
        self._wait = wait
        self._noun = noun  # "pack builder", "download slot": what a refusal says is busy
        self._by_client: dict[str, int] = {}  # client → slots it holds or waits for
        self._lock = threading.Lock()

    def take(self, client: str | None = None) -> Callable[[], None]:
        """Take a slot for ``client`` (None: not counted per client) → the call that gives it back (once).

        Raises:
            ClientShareTaken: ``client`` holds its share already.
            ServerBusy: no slot freed up within the wait.
        """
        self._count_in(client)
        if not self._free.acquire(timeout=self._wait):
            self._count_out(client)
            raise ServerBusy(f"every {self._noun} of this worker is busy; retry shortly")
        given_back = threading.Event()

        def give_back() -> None:
            if not given_back.is_set():
                given_back.set()
                self._free.release()
                self._count_out(client)

        return give_back

    @contextmanager
    def held(self, client: str | None = None) -> Iterator[None]:
        """A slot for the ``with`` block (``take``)."""
        give_back = self.take(client)
        try:
            yield
        finally:
            give_back()

    def _count_in(self, client: str | None) -> None:
        if client is None or not self._per_client:
            return
        with self._lock:
            held = self._by_client.get(client, 0)
            if held >= self._per_client:
                raise ClientShareTaken(f"this client holds {held} {self._noun}(s) of this worker already; "
                                 f"retry when one is done")
            self._by_client[client] = held + 1

    def _count_out(self, client: str | None) -> None:
        if client is None or not self._per_client:
            return
        with self._lock:
            left = self._by_client.pop(client) - 1
            if left:
                self._by_client[client] = left
