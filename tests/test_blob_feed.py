"""The build's blob feed: blobs read and verified on a helper thread, in order, bounded, stopped on failure."""
from __future__ import annotations

import io
import threading
import zlib

import pytest

from mpack.format import ids
from mpack.hub import blob_feed
from mpack.hub.blob_feed import BlobFeed, StoredBlob
from mpack.hub.errors import CorruptStoredBlob

BIG = blob_feed.CHUNK * 2 + 12345  # three chunks


def stored(*contents: bytes, crc: bool = False) -> tuple[list[StoredBlob], dict[str, bytes]]:
    """Blobs as a build lists them (with the CRC-32 a push records, or none as on older rows), and their bytes."""
    files = {ids.object_digest(c): c for c in contents}
    return [StoredBlob(d, "sha256:" + d, len(c), zlib.crc32(c) if crc else None) for d, c in files.items()], files


def read_all(source) -> bytes:
    """A blob's bytes, copied: what the feed hands over is valid until the next blob (its buffer is reused)."""
    if isinstance(source, (bytes, memoryview)):
        return bytes(source)
    parts = []
    while chunk := source.read(blob_feed.CHUNK):
        parts.append(bytes(chunk))  # a chunk is valid until the next read (its buffer is reused)
    return b"".join(parts)


@pytest.mark.parametrize("crc", [False, True])
def test_blobs_come_out_in_order_with_their_bytes_small_large_and_empty(crc):
    order, files = stored(b"small", bytes(range(256)) * (BIG // 256), b"", crc=crc)
    with BlobFeed(order, lambda d: io.BytesIO(files[d])) as feed:
        got = [(object_id, read_all(source), size) for object_id, source, size in feed]
    assert got == [(b.object_id, files[b.digest], b.size) for b in order]


@pytest.mark.parametrize("crc", [False, True])
@pytest.mark.parametrize("size", [5, BIG])
def test_a_blob_whose_bytes_do_not_match_its_checksum_raises(size, crc):
    order, files = stored(b"x" * size, crc=crc)
    with BlobFeed(order, lambda d: io.BytesIO(b"y" * size)) as feed, pytest.raises(CorruptStoredBlob) as info:
        for _, source, _ in feed:
            read_all(source)
    assert ("CRC-32" if crc else "hash to") in str(info.value)


def test_the_recorded_crc_is_what_a_blob_is_checked_against():
    [blob], files = stored(b"the notes", crc=True)
    wrong = blob._replace(crc32=blob.crc32 ^ 1)  # a row whose CRC disagrees with intact bytes
    with BlobFeed([wrong], lambda d: io.BytesIO(files[d])) as feed, pytest.raises(CorruptStoredBlob):
        list(feed)


@pytest.mark.parametrize("size", [5, BIG])
@pytest.mark.parametrize("delta", [-1, 1])
def test_a_stored_file_shorter_or_longer_than_its_record_raises(size, delta):
    order, files = stored(b"z" * size)
    with BlobFeed(order, lambda d: io.BytesIO(b"z" * (size + delta))) as feed, pytest.raises(CorruptStoredBlob) as info:
        for _, source, _ in feed:
            read_all(source)
    assert "bytes where" in str(info.value)


def test_an_error_opening_a_blob_reaches_the_writer():
    order, _ = stored(b"gone")

    def missing(digest):
        raise FileNotFoundError(digest)

    with BlobFeed(order, missing) as feed, pytest.raises(FileNotFoundError):
        list(feed)


def test_a_writer_that_stops_early_stops_the_reading_thread_and_closes_files():
    # more than the queue and the opened-ahead window hold
    contents = [bytes([n]) * blob_feed.CHUNK for n in range(2 * (blob_feed.AHEAD + blob_feed.LOOKAHEAD))]
    order, files = stored(*contents)
    opened: list[io.BytesIO] = []

    def open_blob(digest):
        opened.append(io.BytesIO(files[digest]))
        return opened[-1]

    with pytest.raises(RuntimeError), BlobFeed(order, open_blob) as feed:
        for _ in feed:
            raise RuntimeError("the pack's disk is full")
    assert not any(t.name == "mpack-blob-feed" for t in threading.enumerate())
    assert len(opened) < len(order) and all(f.closed for f in opened)


class Dribble(io.BytesIO):
    """A stream that returns at most 1,000 bytes a read, as a bucket's HTTP body may."""

    def read(self, n=-1):
        return super().read(1000 if n < 0 else min(n, 1000))

    def readinto(self, view):
        return super().readinto(memoryview(view)[:1000])


class ReadOnly:
    """The same without ``readinto``: a stream that offers only ``read`` and ``close``."""

    def __init__(self, data: bytes) -> None:
        self._inner = Dribble(data)

    def read(self, n=-1):
        return self._inner.read(n)

    def close(self):
        self._inner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


@pytest.mark.parametrize("stream", [Dribble, ReadOnly])
def test_short_reads_from_a_stream_are_not_mistaken_for_a_short_file(stream):
    order, files = stored(b"s" * 5000, bytes(range(256)) * (BIG // 256))
    with BlobFeed(order, lambda d: stream(files[d])) as feed:
        assert [read_all(source) for _, source, _ in feed] == [files[b.digest] for b in order]


def test_every_blob_byte_travels_in_a_bounded_pool_of_reused_buffers():
    """Many MiB of large and small blobs through the feed: the buffers behind them are the pool's, never more."""
    order, files = stored(*(bytes([n]) * BIG for n in range(blob_feed.BUFFERS + 4)),
                          *(b"small %d" % n * 5000 for n in range(2000)))
    buffers = set()
    with BlobFeed(order, lambda d: io.BytesIO(files[d])) as feed:
        for (_, source, _), blob in zip(feed, order, strict=True):
            if isinstance(source, memoryview):  # a small blob, whole
                buffers.add(id(source.obj))
                assert bytes(source) == files[blob.digest]
                continue
            parts = []
            while chunk := source.read(blob_feed.CHUNK):
                buffers.add(id(chunk.obj))
                parts.append(bytes(chunk))
            assert b"".join(parts) == files[blob.digest]
    assert len(buffers) <= blob_feed.BUFFERS


def test_blobs_are_opened_ahead_but_never_more_than_the_lookahead_at_once():
    contents = [b"blob %d" % n for n in range(blob_feed.LOOKAHEAD * 3)]
    order, files = stored(*contents)
    open_now, most = set(), [0]

    class Tracked(io.BytesIO):
        def close(self):
            open_now.discard(id(self))
            super().close()

    def open_blob(digest):
        source = Tracked(files[digest])
        open_now.add(id(source))
        most[0] = max(most[0], len(open_now))
        return source

    with BlobFeed(order, open_blob) as feed:
        got = [read_all(source) for _, source, _ in feed]
    assert got == [files[b.digest] for b in order]
    assert 1 < most[0] <= blob_feed.LOOKAHEAD + 1 and not open_now


def test_a_blob_that_cannot_be_opened_fails_at_its_turn_after_the_blobs_before_it(tmp_path):
    order, files = stored(*(b"file %d" % n for n in range(6)))
    gone = order[3].digest
    for digest, content in files.items():
        if digest != gone:
            (tmp_path / digest).write_bytes(content)  # real files: the read-ahead hint is given for them

    def open_blob(digest):
        return open(tmp_path / digest, "rb")  # noqa: SIM115 — the feed closes it

    received = []
    with BlobFeed(order, open_blob) as feed, pytest.raises(FileNotFoundError):
        for object_id, source, _ in feed:
            received.append((object_id, read_all(source)))
    assert received == [(b.object_id, files[b.digest]) for b in order[:3]]


def test_a_small_pack_gets_buffers_its_size_not_a_mebibyte_each():
    """A one-commit fetch's build reads a few bytes: it must not allocate (and zero) MiB-sized buffers."""
    order, files = stored(b"one line\n", b"another\n")
    with BlobFeed(order, lambda d: io.BytesIO(files[d])) as feed:
        got = [(bytes(source), len(source.obj)) for _, source, _ in feed]
    assert [content for content, _ in got] == [files[b.digest] for b in order]
    assert max(size for _, size in got) <= len(b"one line\n") + len(b"another\n") + 3


def test_a_store_with_concurrent_opens_has_that_many_in_flight_and_keeps_the_order():
    """A bucket's opens (one GET each) overlap: four opens meet at a barrier that one-at-a-time opening never
    reaches (it would time out); the blobs still come out in pack order with their bytes."""
    order, files = stored(*(b"blob %d" % n * (n + 1) for n in range(12)), BIG * b"x"[:1], crc=True)
    meeting = threading.Barrier(4, timeout=10)
    in_flight, most, calls = [0], [0], [0]
    lock = threading.Lock()

    def open_blob(digest):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            calls[0] += 1
            first_four = calls[0] <= 4
        if first_four:
            meeting.wait()  # the first four opens are in flight together
        with lock:
            in_flight[0] -= 1
        return io.BytesIO(files[digest])

    with BlobFeed(order, open_blob, concurrent_opens=4) as feed:
        got = [(object_id, read_all(source)) for object_id, source, _ in feed]
    assert got == [(b.object_id, files[b.digest]) for b in order]
    assert most[0] == 4


def test_concurrent_opens_report_a_missing_blob_when_the_build_reaches_it():
    order, files = stored(b"one", b"two", b"three")
    missing = order[1].digest

    def open_blob(digest):
        if digest == missing:
            raise FileNotFoundError(digest)
        return io.BytesIO(files[digest])

    with BlobFeed(order, open_blob, concurrent_opens=3) as feed, pytest.raises(FileNotFoundError):
        for _, source, _ in feed:
            read_all(source)
