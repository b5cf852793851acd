"""The blobs of a pack being built, read and verified on a helper thread ahead of the writer.

A build checks every stored blob as it reads it (a damaged blob fails the
build instead of shipping) and hashes the pack as it writes it (its sha256 is
the mpack id). The check is the CRC-32 recorded at push, when the same bytes
were hashed against their id: zlib's crc32 runs at ~3x sha256's speed here
(6.9 vs 2.0 GB/s), and with the length it catches damage on disk as surely.
Rows older than schema 7 have no CRC: their blobs are checked by sha256.
Both zlib and hashlib release the GIL, so on two cores this thread opens,
reads and checks blobs in pack order while the caller's thread hashes and
writes the pack. At most ``AHEAD`` chunks of at most ``CHUNK`` bytes wait
between them, whatever the size of a blob.

The thread also opens the next ``LOOKAHEAD`` blobs before it needs them and
asks the kernel to start reading them (``POSIX_FADV_WILLNEED``), so that a
build whose blobs are not in memory keeps several reads in flight instead of
waiting for one file at a time: reading a 1× history's 347 MB of blobs from a
cold cache went from 0.75–1.23 s to 0.40 s here. A store whose opens wait on
the network (a bucket: one GET each) has ``concurrent_opens`` > 1: that many
blobs are then opened at once on helper threads (and no more are kept open:
each holds a connection), instead of one round trip after another (a build
of 258 blobs from moto's server on loopback: 3.2–3.5 s → 2.5–2.6 s; a bucket
20–50 ms away waits that long per GET, so the gain grows with the distance).

Every byte is read (``readinto``) into a pool of at most ``BUFFERS`` reused
buffers of ``CHUNK`` bytes (made as needed, smaller for a pack of few
bytes) — a large blob a chunk per buffer, small blobs one after another in
one — instead of a fresh ``bytes`` per blob or chunk: each fresh
buffer cost an allocation and new pages (reading a 4× history's 1.43 GB of
blobs took 0.73–0.96 s with ``read`` and 0.38–0.40 s into a reused buffer
here). What the feed hands the writer is therefore valid only until the
writer asks for the next group or chunk, and the pool bounds the bytes held.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, NamedTuple

from mpack.format.layout import CHUNK_SIZE
from mpack.hub.errors import CorruptStoredBlob

CHUNK = CHUNK_SIZE  # the writer's chunk: a large blob is handed over in the pieces the pack stores
# Chunks (or batches of small blobs) read ahead of the writer, at most: 8 MiB (24 cost a 4× build
# 10 MiB of peak RSS and bought no speed).
AHEAD = 8
# Pooled buffers of CHUNK bytes, every queue slot's, the writer's and the reader's: all the blob
# bytes a build holds.
BUFFERS = AHEAD + 2
LOOKAHEAD = 32  # blobs opened, and their reads started, before the one being read is done
_PUT_WAIT = 0.1  # seconds between checks of a cancelled build while the queue is full
_END = object()


class StoredBlob(NamedTuple):
    """A blob of the pack: its digest, its id as the snapshot spells it, its size and CRC-32 (None: unknown)."""

    digest: str
    object_id: str
    size: int
    crc32: int | None


class _Crc32:
    """A running CRC-32 with hashlib's ``update``."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)


class FeedCancelled(Exception):
    """The writer stopped taking blobs (it failed); the reading thread ends."""


class BlobFeed:
    """Yields ``(object_id, source, size)`` for each blob; ``source`` is bytes or a file-like reader.

    Args:
        blobs: The pack's blobs, in pack order.
        open_blob: Opens a stored blob by digest (raises the store's error if it is gone).

    A blob whose bytes do not match its CRC-32 (without one, its digest) or
    whose length is not its recorded size raises ``CorruptStoredBlob`` from
    the feed (from the source's ``read`` for a large blob, once its last chunk
    has been read and before the writer takes the record as complete). Leaving the ``with``
    block stops the reading thread.
    """

    def __init__(self, blobs: list[StoredBlob], open_blob: Callable[[str], BinaryIO], *,
                 concurrent_opens: int = 1) -> None:
        self._blobs, self._open, self._concurrent_opens = blobs, open_blob, concurrent_opens
        self._queue: queue.Queue = queue.Queue(maxsize=AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mpack-blob-feed", daemon=True)
        self._batch: list[tuple[str, memoryview | bytes, int]] = []
        self._batch_buffer: bytearray | None = None  # the pooled buffer the batch's blobs were read into
        self._batch_used = 0
        # Every byte travels in these: the writer holds one buffer, the rest are read ahead of it.
        # Made as needed, up to BUFFERS, and no larger than the pack's blobs need: a one-commit
        # fetch's build allocated (and zeroed) 10 MiB here for a few bytes of blobs.
        self._free: queue.Queue = queue.Queue()
        self._made = 0
        self._buffer_size = min(CHUNK, sum(blob.size + 1 for blob in blobs)) + 1

    def __enter__(self) -> BlobFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        while self._thread.is_alive():  # let a thread waiting on a full queue see the stop
            self._drain()
            self._thread.join(_PUT_WAIT)

    def __iter__(self) -> Iterator[tuple[str, bytes | BinaryIO, int]]:
        """``(object_id, source, size)`` per blob, in order."""
        for group in self.groups():
            yield from group if isinstance(group, list) else (group,)

    def groups(self) -> Iterator[list[tuple[str, memoryview | bytes, int]] | tuple[str, BinaryIO, int]]:
        """The blobs as they travel: lists of whole blobs (bytes-like sources, at most ``CHUNK`` each),
        or one large blob whose source must be read to its end before the next group. A group's
        bytes are valid until the next group is asked for (their buffer is then reused)."""
        remaining = len(self._blobs)
        lent: _QueuedSource | bytearray | None = None
        while remaining:
            self._give_back(lent)  # resumed: the writer is done with the group before
            lent = None
            item = self._take()
            if isinstance(item, _Batch):
                lent = item.buffer
                yield item.blobs
                remaining -= len(item.blobs)
                continue
            object_id, size, first = item  # a large blob: its first chunk, the rest through the source
            lent = _QueuedSource(self, first)
            yield object_id, lent, size
            remaining -= 1
        self._give_back(lent)

    def _give_back(self, lent: _QueuedSource | bytearray | None) -> None:
        if isinstance(lent, _QueuedSource):
            lent.release()
        elif lent is not None:
            self._free.put(lent)

    # -- the reading thread ------------------------------------------------------------

    def _run(self) -> None:
        ahead = _OpenedAhead(self._blobs, self._open, self._concurrent_opens)
        try:
            try:
                for blob in self._blobs:
                    self._feed_one(blob, ahead)
            finally:
                ahead.close()
                self._send_batch()  # what was read before a failure goes first, in order
        except FeedCancelled:
            return
        except BaseException as exc:  # noqa: BLE001 — handed to the writer's thread and raised there
            self._put(exc)

    def _feed_one(self, blob: StoredBlob, ahead: _OpenedAhead) -> None:
        object_id, size = blob.object_id, blob.size
        checksum, done = (hashlib.sha256() if blob.crc32 is None else _Crc32()), 0
        if size == 0:
            _check(checksum, blob, 0)
            self._batch.append((object_id, b"", 0))
            return
        with ahead.take(blob) as source:
            if size <= CHUNK:
                data = _read_into(source, self._batch_space(size + 1))  # one byte more: a longer file is damaged too
                checksum.update(data)
                _check(checksum, blob, len(data))
                self._batch.append((object_id, data, size))
                self._batch_used += size
                return
            self._send_batch()
            first = True
            while True:
                buffer = self._free_buffer()
                chunk = _read_into(source, memoryview(buffer)[:min(CHUNK, size + 1 - done)])
                if not chunk:
                    self._free.put(buffer)
                    break
                checksum.update(chunk)
                done += len(chunk)
                if done > size:
                    break
                self._put((object_id, size, _Chunk(chunk, buffer)) if first else _Chunk(chunk, buffer))
                first = False
        _check(checksum, blob, done)
        self._put(_END)

    def _batch_space(self, n: int) -> memoryview:
        """Room for ``n`` bytes in the batch's buffer; a full batch goes to the writer first."""
        if self._batch_buffer is not None and self._batch_used + n > len(self._batch_buffer):
            self._send_batch()
        if self._batch_buffer is None:
            self._batch_buffer, self._batch_used = self._free_buffer(), 0
        return memoryview(self._batch_buffer)[self._batch_used:self._batch_used + n]

    def _send_batch(self) -> None:
        if self._batch:
            self._put(_Batch(self._batch, self._batch_buffer))
            self._batch, self._batch_buffer = [], None
        elif self._batch_buffer is not None:
            self._free.put(self._batch_buffer)
            self._batch_buffer = None

    def _free_buffer(self) -> bytearray:
        """A buffer the writer is done with (they come back as it asks for the next chunk), or a new one."""
        if self._made < BUFFERS and self._free.empty():
            self._made += 1
            return bytearray(self._buffer_size)
        while True:
            if self._stop.is_set():
                raise FeedCancelled
            try:
                return self._free.get(timeout=_PUT_WAIT)
            except queue.Empty:
                continue

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


class _OpenedAhead:
    """The next non-empty blobs, opened in pack order ahead of their reads (``LOOKAHEAD`` of them, their
    reads started), or ``concurrent`` at once on helper threads (no more kept open)."""

    def __init__(self, blobs: list[StoredBlob], open_blob: Callable[[str], BinaryIO], concurrent: int = 1) -> None:
        self._pending = iter([blob for blob in blobs if blob.size])
        self._open = open_blob
        self._pool = ThreadPoolExecutor(concurrent, thread_name_prefix="mpack-blob-open") if concurrent > 1 else None
        self._size = LOOKAHEAD if self._pool is None else concurrent
        self._window: deque[tuple[StoredBlob, Future]] = deque()

    def take(self, blob: StoredBlob) -> BinaryIO:
        """The opened source of ``blob`` (the next non-empty one); the store's error if it could not be opened."""
        self._fill()
        expected, opened = self._window.popleft()
        assert expected is blob, "blobs are taken in pack order"
        self._fill()
        return opened.result()  # raised when the build reaches this blob

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        while self._window:
            _, opened = self._window.popleft()
            if not opened.cancelled() and opened.exception() is None:
                with contextlib.suppress(OSError):
                    opened.result().close()

    def _fill(self) -> None:
        while len(self._window) < self._size:
            blob = next(self._pending, None)
            if blob is None:
                return
            if self._pool is not None:
                self._window.append((blob, self._pool.submit(self._opened, blob.digest)))
                continue
            opened: Future = Future()
            try:
                opened.set_result(self._opened(blob.digest))
            except Exception as exc:  # noqa: BLE001 — raised when the build reaches this blob
                opened.set_exception(exc)
            self._window.append((blob, opened))

    def _opened(self, digest: str) -> BinaryIO:
        source = self._open(digest)
        _start_reading(source)
        return source


def _start_reading(source: BinaryIO) -> None:
    """Ask the kernel to read a local file ahead (a hint: nothing happens where it is not possible)."""
    try:
        os.posix_fadvise(source.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
    except (AttributeError, OSError, ValueError):  # no fileno (a stream), or no posix_fadvise here
        pass


class _Batch(NamedTuple):
    """Whole small blobs read one after another into one pooled buffer."""

    blobs: list[tuple[str, memoryview | bytes, int]]
    buffer: bytearray | None  # None: only empty blobs


class _Chunk(NamedTuple):
    """A chunk of a large blob: a view of a pooled buffer, given back when the writer moves on."""

    view: memoryview
    buffer: bytearray


class _QueuedSource:
    """A large blob's chunks as a file-like object, for ``MPackWriter.add_blob``.

    Each ``read`` returns a view of a pooled buffer, valid until the next ``read``: the
    buffer then goes back to the feed for another chunk.
    """

    def __init__(self, feed: BlobFeed, first: _Chunk) -> None:
        self._feed, self._next, self._held = feed, first.view, first.buffer
        self._lent: bytearray | None = None

    def release(self) -> None:
        """Give back the buffer of the chunk read last (the writer is done with it)."""
        if self._lent is not None:
            self._feed._free.put(self._lent)
            self._lent = None

    def read(self, n: int = -1) -> memoryview | bytes:
        self.release()
        if self._next is None:
            return b""
        data = self._next
        if n != -1 and n < len(data):  # the writer asks for whole chunks: split only if it does not
            self._next = data[n:]
            return data[:n]
        self._lent = self._held
        item = self._feed._take()
        if item is _END:
            self._next = self._held = None
        else:
            self._next, self._held = item.view, item.buffer
        return data


def _read_into(source: BinaryIO, view: memoryview) -> memoryview:
    """Fill ``view`` from ``source`` → the part filled (shorter only at the end of the file)."""
    readinto = getattr(source, "readinto", None)
    got = 0
    while got < len(view):
        if readinto is not None:
            n = readinto(view[got:])
        else:  # a stream without readinto: one copy more
            data = source.read(len(view) - got)
            n = len(data)
            view[got:got + n] = data
        if not n:
            break
        got += n
    return view[:got]


def _check(checksum: hashlib._Hash | _Crc32, blob: StoredBlob, length: int) -> None:
    if length != blob.size:
        held = f"more than {blob.size}" if length > blob.size else str(length)
        raise CorruptStoredBlob(blob.digest, f"the file holds {held} bytes where {blob.size} were stored")
    if isinstance(checksum, _Crc32):
        if checksum.value != blob.crc32:
            raise CorruptStoredBlob(blob.digest, f"its CRC-32 is {checksum.value:08x}, {blob.crc32:08x} when pushed")
        return
    actual = checksum.hexdigest()
    if actual != blob.digest:
        raise CorruptStoredBlob(blob.digest, f"its bytes hash to {actual}")
