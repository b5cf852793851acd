"""Coalescing identical work: one build per key, every caller gets its result.

In-process callers with the same key wait for the leader's result; across
processes the leader holds an exclusive ``flock`` on a per-key lock file, so a
second process blocks until the first has finished and then finds its result
(the caller re-checks the cache inside ``fn``). Locks die with their process.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class _Call:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None


class SingleFlight:
    def __init__(self, lock_dir: Path) -> None:
        self.lock_dir = lock_dir
        self._mutex = threading.Lock()
        self._calls: dict[str, _Call] = {}

    def do(self, key: str, fn: Callable[[], T]) -> T:
        with self._mutex:
            call = self._calls.get(key)
            leader = call is None
            if leader:
                call = self._calls[key] = _Call()
        if not leader:
            call.done.wait()
            if call.error is not None:
                raise call.error
            return call.result  # type: ignore[return-value]
        try:
            with self._process_lock(key):
                call.result = fn()
            return call.result  # type: ignore[return-value]
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._mutex:
                del self._calls[key]
            call.done.set()

    @contextmanager
    def _process_lock(self, key: str) -> Iterator[None]:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        path = self.lock_dir / (hashlib.sha256(key.encode()).hexdigest() + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock
