"""A large object written into a ``LocalStore`` piece by piece (``new_file``): a pack, a pushed blob stream.

The bytes go to a private temp file in the store's ``tmp`` directory (with
write-behind, ``storage/writeback.py``, when the store is durable); at commit
the file is flushed, fsynced and hard-linked to its digest's path
(``LocalStore._link_into_place``: an intact object already there is kept).
"""
from __future__ import annotations

import contextlib
import os
from typing import IO, Protocol

from storage.errors import from_os_error
from storage.pending import PendingFile
from storage.writeback import Writeback


class _Store(Protocol):
    """What a pending file needs of its ``LocalStore``."""

    fsync: bool

    def _locate(self, namespace: str, digest: str) -> tuple[str, str]: ...

    def _make_dirs(self, path: str, unsynced: set[str] | None = None) -> None: ...

    def _link_into_place(self, temp: str, final: str, unsynced: set[str] | None = None) -> bool: ...


class LocalPending(PendingFile):
    """A temp file in the store's ``tmp``: written with write-behind, fsynced and hard-linked to its digest."""

    def __init__(self, store: _Store, namespace: str, name: str, path: str,
                 handle: IO[bytes]) -> None:
        super().__init__(namespace, name)
        self._store = store
        self._path = path
        self._handle = handle
        self._writeback = Writeback()

    def _write(self, data: memoryview) -> None:
        try:
            self._handle.write(data)
            if self._store.fsync:  # a large pending file (a pack) is fsynced at commit: start early
                self._writeback.written(self._handle.fileno(), self.size + data.nbytes, self._handle.flush)
        except OSError as exc:
            raise from_os_error(f"cannot write a {self.namespace} object", exc) from exc

    def _publish(self, digest: str) -> bool:
        store = self._store
        try:
            self._handle.flush()
            if store.fsync:
                os.fsync(self._handle.fileno())
            self._handle.close()
            final = store._locate(self.namespace, digest)[1]
            store._make_dirs(os.path.dirname(final))
            return store._link_into_place(self._path, final)
        except OSError as exc:
            raise from_os_error(f"cannot store {self.namespace} object {digest}", exc) from exc

    def _discard(self) -> None:
        # Best effort: a temp that cannot be removed now is swept by GC later.
        with contextlib.suppress(OSError):
            self._handle.close()
        with contextlib.suppress(OSError):
            os.unlink(self._path)
