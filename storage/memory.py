"""MemoryStore: the in-memory twin of LocalStore, for fast unit tests.

It keeps the same promises as every store (see ``storage.base``): digests
verified, writes atomic, temp files listed until committed or aborted, a
temp removed by the sweep no longer committable. It is thread-safe; it is
not shared between processes and has no local paths.
"""
from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from storage.base import (
    Store,
    check_digest,
    check_namespace,
    check_temp_name,
    new_temp_name,
)
from storage.errors import StorageError, StoredObjectMissing
from storage.pending import PendingFile
from storage.signing import UrlSigner


class MemoryStore(Store):
    """A content-addressed store held in a dict."""

    def __init__(self, signer: UrlSigner, *, clock: Callable[[], float] = time.time) -> None:
        """Build an empty store.

        Args:
            signer: signs the URLs of ``presign_mpack_get``.
            clock: returns the current unix time, used as mtime; injected by tests.
        """
        super().__init__(signer)
        self._clock = clock
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], tuple[bytes, float]] = {}
        self._temps: dict[str, float] = {}
        self.quarantined: list[tuple[str, str, bytes]] = []  # (namespace, digest, bytes) moved aside

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._objects)} objects)"

    def open(self, namespace: str, digest: str) -> BinaryIO:
        return io.BytesIO(self._get(namespace, digest)[0])

    def exists(self, namespace: str, digest: str) -> bool:
        return self._key(namespace, digest) in self._objects

    def delete(self, namespace: str, digest: str) -> bool:
        key = self._key(namespace, digest)
        with self._lock:
            return self._objects.pop(key, None) is not None

    def stat(self, namespace: str, digest: str) -> tuple[int, float]:
        data, mtime = self._get(namespace, digest)
        return len(data), mtime

    def iter_digests(self, namespace: str) -> Iterator[str]:
        check_namespace(namespace)
        with self._lock:
            keys = [digest for ns, digest in self._objects if ns == namespace]
        return iter(sorted(keys))

    def iter_temp(self) -> Iterator[tuple[str, float]]:
        with self._lock:
            return iter(sorted(self._temps.items()))

    def remove_temp(self, name: str) -> bool:
        check_temp_name(name)
        with self._lock:
            return self._temps.pop(name, None) is not None

    def quarantine(self, namespace: str, digest: str, *, keep_intact: bool = True) -> str | None:
        key = self._key(namespace, digest)
        with self._lock:
            found = self._objects.get(key)
            if found is None or (keep_intact and hashlib.sha256(found[0]).hexdigest() == key[1]):
                return None
            del self._objects[key]
            self.quarantined.append((*key, found[0]))
        return f"memory:{namespace}/{key[1]}"

    def probe_write(self) -> None:
        return None  # memory never fills up in a way a probe could see

    def damage(self, namespace: str, digest: str, data: bytes) -> None:
        """Replace an object's bytes without any check: what a failing disk does (tests)."""
        key = self._key(namespace, digest)
        with self._lock:
            self._objects[key] = (data, self._clock())

    def local_path(self, namespace: str, digest: str) -> str | None:
        self._key(namespace, digest)
        return None

    def _key(self, namespace: str, digest: str) -> tuple[str, str]:
        return check_namespace(namespace), check_digest(digest)

    def _get(self, namespace: str, digest: str) -> tuple[bytes, float]:
        key = self._key(namespace, digest)
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise StoredObjectMissing(*key)
        return found

    def _new_pending(self, namespace: str) -> PendingFile:
        name = new_temp_name()
        with self._lock:
            self._temps[name] = self._clock()
        return _MemoryPending(self, namespace, name)

    def _add(self, namespace: str, digest: str, temp_name: str, data: bytes) -> bool:
        """Publish ``data``, as LocalStore's link does: never replace, fail if the temp is gone."""
        with self._lock:
            if temp_name not in self._temps:
                raise StorageError(f"cannot store {namespace} object {digest}: temp file removed")
            existing = self._objects.get((namespace, digest))
            if existing is not None and hashlib.sha256(existing[0]).hexdigest() == digest:
                self._objects[namespace, digest] = (existing[0], self._clock())  # touch, as LocalStore does
                return False
            self._objects[namespace, digest] = (data, self._clock())  # new, or replacing damaged bytes
            return True

    def _drop_temp(self, name: str) -> None:
        with self._lock:
            self._temps.pop(name, None)


class _MemoryPending(PendingFile):
    def __init__(self, store: MemoryStore, namespace: str, name: str) -> None:
        super().__init__(namespace, name)
        self._store = store
        self._buffer = io.BytesIO()

    def _write(self, data: memoryview) -> None:
        self._buffer.write(data)

    def _publish(self, digest: str) -> bool:
        return self._store._add(self.namespace, digest, self.name, self._buffer.getvalue())

    def _discard(self) -> None:
        self._store._drop_temp(self.name)
        self._buffer = io.BytesIO()
