"""The blobs of a pack being built, read and verified on a helper thread ahead of the writer.

A cold build does two sha256 passes over the same bytes: each stored blob
is hashed against its id as it is read (a damaged blob fails the build
instead of shipping), and the pack is hashed as it is written (its digest is
the mpack id). hashlib releases the GIL, so on two cores the passes run side
by side: this thread opens, reads and verifies blobs in pack order while the
caller's thread hashes and writes the pack. At most ``AHEAD`` chunks of at
most ``CHUNK`` bytes wait between them, whatever the size of a blob.
"""
from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO

from mpack.format.writer import CHUNK_SIZE
from mpack.hub.errors import CorruptStoredBlob

CHUNK = CHUNK_SIZE  # the writer's chunk: a large blob is handed over in the pieces the pack stores
AHEAD = 24  # chunks read ahead of the writer, at most (24 MiB)
_PUT_WAIT = 0.1  # seconds between checks of a cancelled build while the queue is full
_END = object()


class FeedCancelled(Exception):
    """The writer stopped taking blobs (it failed); the reading thread ends."""


class BlobFeed:
    """Yields ``(object_id, source, size)`` for each blob; ``source`` is bytes or a file-like reader.

    Args:
        blobs: (digest, object id as spelled, size) in pack order.
        open_blob: Opens a stored blob by digest (raises the store's error if it is gone).

    A blob whose bytes do not hash to its digest, or whose length is not its
    recorded size, raises ``CorruptStoredBlob`` from the feed (from the
    source's ``read`` for a large blob, once its last chunk has been read and
    before the writer takes the record as complete). Leaving the ``with``
    block stops the reading thread.
    """

    def __init__(self, blobs: list[tuple[str, str, int]], open_blob: Callable[[str], BinaryIO]) -> None:
        self._blobs, self._open = blobs, open_blob
        self._queue: queue.Queue = queue.Queue(maxsize=AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mpack-blob-feed", daemon=True)

    def __enter__(self) -> BlobFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        while self._thread.is_alive():  # let a thread waiting on a full queue see the stop
            self._drain()
            self._thread.join(_PUT_WAIT)

    def __iter__(self) -> Iterator[tuple[str, bytes | BinaryIO, int]]:
        for _ in self._blobs:
            item = self._take()
            object_id, size, first = item
            if size <= CHUNK:
                yield object_id, first, size
            else:
                yield object_id, _QueuedSource(self, first), size

    # -- the reading thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            for digest, object_id, size in self._blobs:
                self._feed_one(digest, object_id, size)
        except FeedCancelled:
            return
        except BaseException as exc:  # noqa: BLE001 — handed to the writer's thread and raised there
            self._put(exc)

    def _feed_one(self, digest: str, object_id: str, size: int) -> None:
        if size == 0:
            _check(hashlib.sha256(), digest, 0, 0)
            self._put((object_id, 0, b""))
            return
        sha, done = hashlib.sha256(), 0
        with self._open(digest) as source:
            if size <= CHUNK:
                data = _read_upto(source, size + 1)  # one byte more: a longer file is damaged too
                sha.update(data)
                _check(sha, digest, len(data), size)
                self._put((object_id, size, data))
                return
            first = True
            while chunk := _read_upto(source, min(CHUNK, size + 1 - done)):
                sha.update(chunk)
                done += len(chunk)
                if done > size:
                    break
                self._put((object_id, size, chunk) if first else chunk)
                first = False
        _check(sha, digest, done, size)
        self._put(_END)

    def _put(self, item: object) -> None:
        while True:
            if self._stop.is_set():
                raise FeedCancelled
            try:
                self._queue.put(item, timeout=_PUT_WAIT)
                return
            except queue.Full:
                continue

    # -- the writer's thread -------------------------------------------------------------

    def _take(self) -> object:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass


class _QueuedSource:
    """A large blob's chunks as a file-like object, for ``MPackWriter.add_blob``."""

    def __init__(self, feed: BlobFeed, first: bytes) -> None:
        self._feed, self._next = feed, first

    def read(self, n: int = -1) -> bytes:
        if self._next is None:
            return b""
        data = self._next
        if n != -1 and n < len(data):  # the writer asks for whole chunks: split only if it does not
            self._next = data[n:]
            return data[:n]
        item = self._feed._take()
        self._next = None if item is _END else item
        return data


def _read_upto(source: BinaryIO, n: int) -> bytes:
    """``n`` bytes, fewer only at the end of the file (a bucket's stream may return short reads)."""
    data = source.read(n)
    if len(data) in (0, n):
        return data
    parts = [data]
    got = len(data)
    while got < n and (more := source.read(n - got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _check(sha: hashlib._Hash, digest: str, length: int, size: int) -> None:
    if length != size:
        held = f"more than {size}" if length > size else str(length)
        raise CorruptStoredBlob(digest, f"the file holds {held} bytes where {size} were stored")
    actual = sha.hexdigest()
    if actual != digest:
        raise CorruptStoredBlob(digest, f"its bytes hash to {actual}")
