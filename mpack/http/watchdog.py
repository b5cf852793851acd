"""One thread per process that expires whatever is past its deadline: request bodies
(``bodies``) and downloads (``send_timeout``) whose clients fell behind."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

IDLE_TICK = 1.0  # the watchdog's longest sleep


class Expiring(Protocol):
    def deadline(self) -> float: ...

    def expire(self) -> None: ...


class Watchdog:
    """Calls ``expire()`` once on each watched thing whose ``deadline()`` has passed, then forgets it.

    It never sleeps longer than ``IDLE_TICK``, so a deadline beyond its next
    wake-up is watched without waking it: a request costs a dict insert and
    delete under a lock, not a thread switch (issue 8: the wake-up per request
    halved the cache-hit route's rate under gunicorn). ``expire`` runs with the
    watchdog's lock held, so once ``discard`` returns, the thing was either
    expired already or never will be (a socket back in gunicorn's hands for
    the next request of its connection is never shut): it must be quick, must
    not raise and must not call back in.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, name: str = "deadlines") -> None:
        self.clock = clock
        self.name = name
        self._watched: dict[int, Expiring] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._next_wake = 0.0  # when the thread wakes next (clock time); 0 = it is about to look

    def add(self, watch: Expiring) -> None:
        with self._cond:
            self._watched[id(watch)] = watch
            if self._thread is None or not self._thread.is_alive():  # started lazily: after gunicorn's fork
                self._next_wake = 0.0
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            elif watch.deadline() < self._next_wake:
                self._cond.notify()

    def discard(self, watch: Expiring) -> None:
        with self._cond:
            self._watched.pop(id(watch), None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = self.clock()
                for key, watch in list(self._watched.items()):
                    if watch.deadline() <= now:
                        del self._watched[key]
                        watch.expire()
                soonest = min((w.deadline() for w in self._watched.values()), default=now + IDLE_TICK)
                self._next_wake = min(soonest, now + IDLE_TICK)
                self._cond.wait(max(self._next_wake - now, 0.01))
