"""``PendingFile``: an object being written into a store piece by piece (``Store.new_file``).

It is hashed as it is written and published under its digest by ``commit``;
until then its bytes live in a temp file no reader can see. Backends supply
the temp's write, publish and discard (``storage/local_pending.py``,
``storage/s3_upload.py``, the memory store's).
"""
from __future__ import annotations

import abc
import hashlib

from mpack.format.ids import hex_of
from storage.errors import ContentMismatch


class PendingFile(abc.ABC):
    """An object being written: hashed as it is written, published by ``commit``.

    Obtained from ``Store.new_file``. Until ``commit`` succeeds the bytes
    live in a temp file that no reader can see.
    """

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace = namespace
        self.name = name  # the temp file name, as iter_temp lists it
        self.size = 0
        self.created = False  # set by commit: True if this write added the object
        self._hash = hashlib.sha256()
        self._closed = False

    @property
    def sha256_hex(self) -> str:
        """Hex SHA-256 of the bytes written so far."""
        return self._hash.hexdigest()

    def write(self, data: bytes) -> int:
        """Append ``data``; returns its length.

        Raises:
            ValueError: the file was already committed or aborted.
            StorageError: the backend could not write (the temp is removed).
        """
        self._check_open()
        view = memoryview(data)
        try:
            self._write(view)
        except BaseException:
            self.abort()
            raise
        self._hash.update(view)
        self.size += view.nbytes
        return view.nbytes

    def commit(self, expected_digest: str | None = None) -> str:
        """Publish the object under its own digest and return that hex digest.

        If an object with that digest already exists, the temp is discarded
        and the existing object kept (``created`` stays False). The temp is
        removed whether or not the commit succeeds.

        Args:
            expected_digest: if given (either id spelling), the content must
                hash to it.

        Raises:
            ContentMismatch: the content does not hash to ``expected_digest``.
            InvalidId: ``expected_digest`` is malformed.
            StorageError: the backend could not publish the object.
            ValueError: the file was already committed or aborted.
        """
        self._check_open()
        try:
            actual = self.sha256_hex
            if expected_digest is not None and hex_of(expected_digest) != actual:
                raise ContentMismatch("object", expected_digest, actual)
            self.created = self._publish(actual)
        finally:
            self.abort()
        return actual

    def abort(self) -> None:
        """Discard the temp file; a no-op once committed or aborted."""
        if not self._closed:
            self._closed = True
            self._discard()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this pending file was already committed or aborted")

    @abc.abstractmethod
    def _write(self, data: memoryview) -> None:
        """Append ``data`` to the temp file."""

    @abc.abstractmethod
    def _publish(self, digest: str) -> bool:
        """Make the temp visible as ``digest``; False if it already existed."""

    @abc.abstractmethod
    def _discard(self) -> None:
        """Remove the temp file; must tolerate it being gone already."""
