"""Coalescing identical work: one build per key, every caller gets its result.

In-process callers with the same key wait for the leader's result; across
processes the leader holds an exclusive lock on the key, so a second process
blocks until the first has finished and then finds its result (the caller
re-checks the cache inside ``fn``). On SQLite (one host) that lock is an
``flock`` on a per-key lock file; on PostgreSQL it is a session advisory lock
(``pg_advisory_lock``) on the leader thread's connection, so it also holds
between nodes. Either dies with its holder (process, or connection).

Lock files are kept only while in use: ``sweep`` (run by GC) removes every lock
file nobody holds, taking the lock before unlinking. A taker checks, once it
holds a lock, that its file is still the one at the path, and starts over if
the sweep removed it meanwhile, so two processes never lead the same key.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import peewee as pw

from mpack.hub.db import advisory_key, discard_connection, is_postgres

T = TypeVar("T")
_LOCK_NAME = re.compile(r"[0-9a-f]{64}\.lock")


class _Call:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None


class SingleFlight:
    def __init__(self, lock_dir: Path, database: pw.Database | None = None) -> None:
        self.lock_dir = lock_dir
        self.database = database if database is not None and is_postgres(database) else None
        self._mutex = threading.Lock()
        self._calls: dict[str, _Call] = {}

    def do(self, key: str, fn: Callable[[], T], *,
           unshared: type[BaseException] | tuple[type[BaseException], ...] = ()) -> T:
        """``fn()``'s result, run once for every caller with ``key`` at the same time.

        A leader's error is every waiting caller's too, except an ``unshared`` one: that refusal was
        the leader's own (its client's share), so the others try again, one of them as the new leader.
        """
        while True:
            with self._mutex:
                call = self._calls.get(key)
                leader = call is None
                if leader:
                    call = self._calls[key] = _Call()
            if leader:
                break
            call.done.wait()
            if call.error is None:
                return call.result  # type: ignore[return-value]
            if not isinstance(call.error, unshared):
                raise call.error
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

    def _process_lock(self, key: str):
        return self._database_lock(key) if self.database is not None else self._file_lock(key)

    @contextmanager
    def _database_lock(self, key: str) -> Iterator[None]:
        db, lock = self.database, advisory_key("flight:" + key)
        db.execute_sql("SELECT pg_advisory_lock(%s)", (lock,))
        try:
            yield
        finally:
            try:
                db.execute_sql("SELECT pg_advisory_unlock(%s)", (lock,))
            except pw.PeeweeException:
                # The connection broke (the lock went with its session) or is unusable: closing
                # it is what releases the lock for certain.
                discard_connection(db)

    @contextmanager
    def _file_lock(self, key: str) -> Iterator[None]:
        path = self.lock_dir / (hashlib.sha256(key.encode()).hexdigest() + ".lock")
        fd = self._take(path)
        try:
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _take(self, path: Path) -> int:
        """An open, exclusively locked descriptor of the file now at ``path``."""
        while True:
            self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                return fd
            os.close(fd)  # swept while we waited: lock the new file instead

    def sweep(self, *, dry_run: bool = False) -> int:
        """Remove the lock files no process holds → how many were (or, dry, would be) removed."""
        removed = 0
        try:
            names = [n for n in os.listdir(self.lock_dir) if _LOCK_NAME.fullmatch(n)]
        except FileNotFoundError:
            return 0
        for name in names:
            path = self.lock_dir / name
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, path):
                    if not dry_run:
                        path.unlink()
                    removed += 1
            except BlockingIOError:
                continue  # in use: a build holds it
            finally:
                os.close(fd)
        return removed


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)
