"""The mpack format: write and read packs of blobs, snapshots and commits.

Bytes only: no web framework, no database. The byte layout is specified in
``docs/mpack-format.md``; this module is its reference implementation.

Guarantees:
    * Determinism: the same records added in the same order with the same
      compression level (and the same libzstd) give the same bytes, hence the
      same sha256, which is the mpack id.
    * Bounded memory: the writer and the reader hold at most a few chunks of
      at most ``CHUNK_SIZE`` bytes, plus one snapshot or commit record (at most
      ``MAX_META_RECORD`` bytes), whatever the size of a blob or of the pack.
    * Verification: the reader checks every id against its content, every
      length against its limit before reading, the trailer's counts and
      checksum, and that nothing follows the trailer. Every way a pack can be
      wrong raises an ``MPackError`` subclass (see ``mpack.format_errors``).
"""
from __future__ import annotations

import hashlib
import heapq
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import msgpack
import zstandard

from mpack import ids
from mpack.format_errors import (
    BadMagic,
    ChecksumMismatch,
    IdMismatch,
    MalformedRecord,
    MPackError,
    OversizedRecord,
    Truncated,
    UnsupportedVersion,
)

MAGIC = b"MUSE\0"
VERSION = 1
FLAGS = 0

REC_BLOB, REC_SNAPSHOT, REC_COMMIT, REC_TRAILER = 0x01, 0x02, 0x03, 0xFF
CODEC_RAW, CODEC_ZSTD = 0, 1

CHUNK_SIZE = 1 << 20  # raw bytes per blob chunk, at most
MAX_STORED_CHUNK = CHUNK_SIZE + (64 << 10)  # above zstd's worst-case expansion of 1 MiB
MAX_META_RECORD = 64 << 20  # encoded snapshot or commit, at most

_NAMES = {REC_BLOB: "blob", REC_SNAPSHOT: "snapshot", REC_COMMIT: "commit", REC_TRAILER: "trailer"}
_HEADER = struct.Struct(">5sBB")
_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_BLOB_TAIL = struct.Struct(">QB")  # raw size, codec
_COUNTS = struct.Struct(">QQQQ")  # blobs, snapshots, commits, raw blob bytes
_U64_MAX = (1 << 64) - 1
_DECODE_ERRORS = (ValueError, TypeError, RecursionError, msgpack.UnpackException)


@dataclass(frozen=True)
class Trailer:
    """The verified summary at the end of a pack."""

    blob_count: int
    snapshot_count: int
    commit_count: int
    blob_bytes: int
    checksum_hex: str


@dataclass(frozen=True)
class BlobRecord:
    """A blob; ``chunks`` yields its raw bytes and must be read before the next record.

    The blob's sha256 is checked against ``object_id`` when ``chunks`` is
    exhausted; ``IdMismatch`` is raised from ``chunks`` at that point. If the
    consumer moves on without exhausting it, the reader drains and checks it.
    """

    object_id: str
    size: int
    codec: int
    chunks: Iterator[bytes] = field(repr=False, compare=False)


@dataclass(frozen=True)
class SnapshotRecord:
    """A snapshot dict whose ``snapshot_id`` matches its manifest."""

    data: dict


@dataclass(frozen=True)
class CommitRecord:
    """A commit dict whose ``commit_id`` matches its fields."""

    data: dict


# -- writing ------------------------------------------------------------------------

class _HashingWriter:
    """Passes writes through to a file while hashing and counting them."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._f = fileobj
        self._sha = hashlib.sha256()
        self.bytes_written = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = self._f.write(view)
            view = view[len(view) if written is None else written:]
        self._sha.update(data)
        self.bytes_written += len(data)

    def digest(self) -> bytes:
        return self._sha.digest()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class MPackWriter:
    """Writes one pack: blobs, then snapshots, then commits, then ``finish()``.

    The header is written on construction. Ids are not re-verified here: the
    caller passes records it has verified already.

    Args:
        fileobj: A binary file-like object opened for writing.
        level: zstd compression level (1-22) tried on each blob.

    Raises:
        ValueError: On misuse: records out of order, a blob whose source has
            another length than ``size``, a record msgpack cannot encode, any
            call after ``finish()``, or after an ``add_blob`` failed half-way.
    """

    def __init__(self, fileobj: BinaryIO, *, level: int = 3) -> None:
        if not isinstance(level, int) or not 1 <= level <= 22:
            raise ValueError(f"zstd level must be an int from 1 to 22, not {level!r}")
        self._out = _HashingWriter(fileobj)
        self._zstd = zstandard.ZstdCompressor(level=level)
        self._stage = REC_BLOB
        self._counts = {REC_BLOB: 0, REC_SNAPSHOT: 0, REC_COMMIT: 0}
        self._blob_bytes = 0
        self._broken = False
        self._trailer: Trailer | None = None
        self._out.write(_HEADER.pack(MAGIC, VERSION, FLAGS))

    @property
    def sha256_hex(self) -> str:
        """Hex sha256 of every byte written so far (the whole pack after ``finish()``)."""
        return self._out.hexdigest()

    @property
    def bytes_written(self) -> int:
        """Number of bytes written so far."""
        return self._out.bytes_written

    def add_blob(self, object_id: str, source: bytes | BinaryIO, size: int) -> None:
        """Append a blob record, streaming ``source`` in chunks of ``CHUNK_SIZE``.

        Args:
            object_id: The blob's id, in either spelling; written as given.
            source: The content: a bytes-like object, or a binary file-like
                object read from its current position.
            size: The exact number of content bytes ``source`` holds.
        """
        self._enter(REC_BLOB)
        if not ids.is_id(object_id):
            raise ValueError(f"malformed object id {object_id!r}")
        if not isinstance(size, int) or not 0 <= size <= _U64_MAX:
            raise ValueError(f"blob size must be an int from 0 to 2**64-1, not {size!r}")
        chunks = _source_chunks(source, size)
        first = next(chunks, b"")
        frame = self._zstd.compress(first) if first else b""
        codec = CODEC_ZSTD if first and len(frame) * 10 <= len(first) * 9 else CODEC_RAW
        self._broken = True  # a failure from here on leaves half a record behind
        oid = object_id.encode("ascii")
        self._out.write(_U8.pack(REC_BLOB) + _U8.pack(len(oid)) + oid + _BLOB_TAIL.pack(size, codec))
        if first:
            self._write_chunk(first, codec, frame)
        del first, frame  # hold one chunk at a time, not the first for the whole blob
        for chunk in chunks:
            self._write_chunk(chunk, codec, None)
            del chunk  # release it before the next read
        self._out.write(_U32.pack(0))
        self._broken = False
        self._added(REC_BLOB)
        self._blob_bytes += size

    def add_snapshot(self, snapshot: dict) -> None:
        """Append a snapshot record (the dict as given, keys sorted)."""
        self._add_meta(REC_SNAPSHOT, snapshot)

    def add_commit(self, commit: dict) -> None:
        """Append a commit record (the dict as given, keys sorted)."""
        self._add_meta(REC_COMMIT, commit)

    def finish(self) -> Trailer:
        """Write the trailer and return it; the writer accepts nothing after this.

        Returns:
            The trailer written. ``sha256_hex`` is then the pack's id.
        """
        self._enter(REC_TRAILER)
        counts = (self._counts[REC_BLOB], self._counts[REC_SNAPSHOT], self._counts[REC_COMMIT])
        self._out.write(_U8.pack(REC_TRAILER) + _COUNTS.pack(*counts, self._blob_bytes))
        checksum = self._out.digest()
        self._out.write(checksum)
        self._trailer = Trailer(*counts, self._blob_bytes, checksum.hex())
        return self._trailer

    def _enter(self, kind: int) -> None:
        if self._trailer is not None:
            raise ValueError("the pack is finished; nothing can be added")
        if self._broken:
            raise ValueError("the writer is unusable: an earlier add_blob failed half-way")
        if kind < self._stage:
            raise ValueError(
                f"cannot add a {_NAMES[kind]} after a {_NAMES[self._stage]}: "
                "a pack holds blobs, then snapshots, then commits"
            )

    def _added(self, kind: int) -> None:
        self._stage = kind
        self._counts[kind] += 1

    def _write_chunk(self, chunk: bytes | memoryview, codec: int, frame: bytes | None) -> None:
        if codec == CODEC_RAW:
            self._out.write(_U32.pack(len(chunk)))
            self._out.write(chunk)
            return
        frame = self._zstd.compress(chunk) if frame is None else frame
        self._out.write(_U32.pack(len(frame)) + _U32.pack(len(chunk)))
        self._out.write(frame)

    def _add_meta(self, kind: int, record: dict) -> None:
        self._enter(kind)
        if not isinstance(record, dict):
            raise TypeError(f"a {_NAMES[kind]} must be a dict, not {type(record).__name__}")
        payload = encode_record(record)
        if len(payload) > MAX_META_RECORD:
            raise OversizedRecord(f"{_NAMES[kind]} record", len(payload), MAX_META_RECORD)
        self._out.write(_U8.pack(kind) + _U32.pack(len(payload)))
        self._out.write(payload)
        self._added(kind)


def encode_record(record: dict) -> bytes:
    """Canonical msgpack of a snapshot or commit dict: str keys, sorted at every level.

    Raises:
        ValueError: A key is not a str, or a value msgpack cannot encode.
    """
    try:
        return msgpack.packb(_canonical(record), use_bin_type=True)
    except (TypeError, ValueError, OverflowError, RecursionError, msgpack.PackException) as exc:
        raise ValueError(f"record cannot be encoded: {exc}") from exc


def _canonical(value: object) -> object:
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ValueError("dict keys in a record must be str")
        return {key: _canonical(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    return value


def _source_chunks(source: bytes | BinaryIO, size: int) -> Iterator[bytes | memoryview]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source).cast("B")
        if len(view) != size:
            raise ValueError(f"blob source holds {len(view)} bytes, size says {size}")
        for start in range(0, size, CHUNK_SIZE):
            yield view[start:start + CHUNK_SIZE]
        return
    done = 0
    while done < size:
        want = min(size - done, CHUNK_SIZE)
        chunk = _read_full(source, want)
        if len(chunk) < want:
            raise ValueError(f"blob source ended after {done + len(chunk)} bytes, size says {size}")
        done += want
        yield chunk
    if source.read(1):
        raise ValueError(f"blob source holds more than {size} bytes")


def _read_full(fileobj: BinaryIO, n: int) -> bytes | bytearray:
    """Read ``n`` bytes, looping over short reads; fewer only at end of file."""
    data = fileobj.read(n) or b""
    if 0 < len(data) < n:
        buf = bytearray(data)
        while len(buf) < n and (more := fileobj.read(min(n - len(buf), CHUNK_SIZE))):
            buf += more
        return buf
    return data


def canonical_order_commits(commits: list[dict]) -> list[dict]:
    """Order commits parents first, ties broken by ``commit_id``.

    Parents (``parent_commit_id``, ``parent2_commit_id``) not in ``commits``
    are ignored. The result depends only on the set of commits, not on the
    order given (Kahn's algorithm with a heap; no recursion).

    Raises:
        ValueError: A commit id appears twice, or the parent links form a cycle.
    """
    by_id: dict[str, dict] = {}
    for commit in commits:
        if commit["commit_id"] in by_id:
            raise ValueError(f"commit {commit['commit_id']} appears twice")
        by_id[commit["commit_id"]] = commit
    children: dict[str, list[str]] = {commit_id: [] for commit_id in by_id}
    waiting: dict[str, int] = {}
    for commit_id, commit in by_id.items():
        parents = {commit.get("parent_commit_id"), commit.get("parent2_commit_id")} & by_id.keys()
        waiting[commit_id] = len(parents)
        for parent in parents:
            children[parent].append(commit_id)
    ready = [commit_id for commit_id, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        commit_id = heapq.heappop(ready)
        ordered.append(by_id[commit_id])
        for child in children[commit_id]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, child)
    if len(ordered) != len(by_id):
        raise ValueError("commit parents form a cycle")
    return ordered


# -- reading ------------------------------------------------------------------------

class _HashingReader:
    """Reads exact lengths from a file while hashing them and tracking the offset."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._f = fileobj
        self._sha = hashlib.sha256()
        self.offset = 0

    def read_upto(self, n: int) -> bytes | bytearray:
        data = _read_full(self._f, n)
        self._sha.update(data)
        self.offset += len(data)
        return data

    def read_exact(self, n: int, what: str) -> bytes | bytearray:
        start = self.offset
        data = self.read_upto(n)
        if len(data) < n:
            raise Truncated(start, what, n, len(data))
        return data

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def read_u8(self, what: str) -> int:
        return self.read_exact(1, what)[0]

    def read_u32(self, what: str) -> int:
        return _U32.unpack(self.read_exact(4, what))[0]


class _BlobChunks:
    """Iterator over one blob's raw chunks that checks lengths, then the id at the end.

    A failure is sticky: once raised, every later ``next()`` raises it again,
    so a consumer that swallows it cannot make the reader carry on.
    """

    def __init__(self, src: _HashingReader, object_id: str, size: int, zstd: bool,
                 dctx: zstandard.ZstdDecompressor) -> None:
        self._src, self._object_id, self._zstd, self._dctx = src, object_id, zstd, dctx
        self._remaining = size
        self._sha = hashlib.sha256()
        self._error: MPackError | None = None
        self._done = False

    def __iter__(self) -> _BlobChunks:
        return self

    def __next__(self) -> bytes:
        if self._error is not None:
            raise self._error
        if self._done:
            raise StopIteration
        try:
            chunk = self._read_chunk()
        except MPackError as exc:
            self._error = exc
            raise
        if chunk is None:
            self._done = True
            raise StopIteration
        return chunk

    def drain(self) -> None:
        for _ in self:
            pass

    def _read_chunk(self) -> bytes | None:
        offset = self._src.offset
        stored = self._src.read_u32("chunk length")
        if stored == 0:
            self._finish(offset)
            return None
        raw_len = self._src.read_u32("chunk raw length") if self._zstd else stored
        if raw_len > CHUNK_SIZE:
            raise OversizedRecord("blob chunk", raw_len, CHUNK_SIZE)
        if stored > MAX_STORED_CHUNK:
            raise OversizedRecord("compressed blob chunk", stored, MAX_STORED_CHUNK)
        if not 0 < raw_len <= self._remaining:
            raise MalformedRecord(offset, f"chunk of {raw_len} raw bytes with {self._remaining} left in the blob")
        data = self._src.read_exact(stored, "chunk data")
        data = _decompress(self._dctx, data, raw_len, offset) if self._zstd else bytes(data)
        self._sha.update(data)
        self._remaining -= raw_len
        return data

    def _finish(self, offset: int) -> None:
        if self._remaining:
            raise MalformedRecord(offset, f"blob ends {self._remaining} bytes short of its declared size")
        actual = self._sha.hexdigest()
        if actual != ids.hex_of(self._object_id):
            raise IdMismatch("blob", self._object_id, actual)


def _decompress(dctx: zstandard.ZstdDecompressor, frame: bytes | bytearray, raw_len: int, offset: int) -> bytes:
    try:
        # The declared content size decides the output allocation: check it first.
        if zstandard.get_frame_parameters(frame).content_size != raw_len:
            raise MalformedRecord(offset, "zstd frame does not declare the chunk's raw length")
        data = dctx.decompress(frame, max_output_size=raw_len, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise MalformedRecord(offset, f"zstd chunk does not decompress: {exc}") from exc
    if len(data) != raw_len:
        raise MalformedRecord(offset, f"zstd chunk holds {len(data)} bytes, not {raw_len}")
    return data


def iter_mpack(fileobj: BinaryIO, *, max_meta_record: int = MAX_META_RECORD) -> Iterator[
    BlobRecord | SnapshotRecord | CommitRecord | Trailer
]:
    """Stream the records of a pack, verifying as it goes.

    Yields each ``BlobRecord``, ``SnapshotRecord`` and ``CommitRecord`` in pack
    order, then the ``Trailer`` as the last item, once counts, checksum and end
    of file have been checked. Each record is verified on its own before the
    next is read, but the pack as a whole is valid only if the ``Trailer`` is
    reached: apply nothing before that.

    Args:
        fileobj: A binary file-like object positioned at the start of the pack.
        max_meta_record: Largest encoded snapshot or commit accepted.

    Raises:
        MPackError: A subclass naming what is wrong (from this generator, or
            from a blob's ``chunks``).
    """
    src = _HashingReader(fileobj)
    _read_header(src)
    dctx = zstandard.ZstdDecompressor()
    counts = {REC_BLOB: 0, REC_SNAPSHOT: 0, REC_COMMIT: 0}
    blob_bytes, stage = 0, REC_BLOB
    while (kind := src.read_u8("record type")) != REC_TRAILER:
        stage = _check_order(kind, stage, src.offset - 1)
        if kind == REC_BLOB:
            object_id, size, codec = _read_blob_head(src)
            chunks = _BlobChunks(src, object_id, size, codec == CODEC_ZSTD, dctx)
            yield BlobRecord(object_id, size, codec, chunks)
            chunks.drain()
            blob_bytes += size
        else:
            yield _read_meta(src, kind, max_meta_record)
        counts[kind] += 1
    yield _read_trailer(src, (counts[REC_BLOB], counts[REC_SNAPSHOT], counts[REC_COMMIT], blob_bytes))


def verify_mpack(fileobj: BinaryIO) -> Trailer:
    """Read and verify a whole pack, discarding its content.

    Returns:
        The verified trailer.

    Raises:
        MPackError: The pack is malformed, truncated or altered.
    """
    return deque(iter_mpack(fileobj), maxlen=1)[0]  # the last item is the Trailer


def _read_header(src: _HashingReader) -> None:
    head = src.read_upto(_HEADER.size)
    if head[:len(MAGIC)] != MAGIC[:len(head)]:
        raise BadMagic(head)
    if len(head) < _HEADER.size:
        raise Truncated(0, "header", _HEADER.size, len(head))
    _, version, flags = _HEADER.unpack(head)
    if version != VERSION or flags != FLAGS:
        raise UnsupportedVersion(version, flags, VERSION)


def _check_order(kind: int, stage: int, offset: int) -> int:
    if kind not in (REC_BLOB, REC_SNAPSHOT, REC_COMMIT):
        raise MalformedRecord(offset, f"unknown record type 0x{kind:02x}")
    if kind < stage:
        raise MalformedRecord(offset, f"{_NAMES[kind]} record after a {_NAMES[stage]} record")
    return kind


def _read_blob_head(src: _HashingReader) -> tuple[str, int, int]:
    offset = src.offset - 1
    raw_id = src.read_exact(src.read_u8("blob id length"), "blob id")
    object_id = raw_id.decode("ascii", errors="replace")
    if not ids.is_id(object_id):
        raise MalformedRecord(offset, f"blob id {object_id[:80]!r} is not a well-formed id")
    size, codec = _BLOB_TAIL.unpack(src.read_exact(_BLOB_TAIL.size, "blob size and codec"))
    if codec not in (CODEC_RAW, CODEC_ZSTD):
        raise MalformedRecord(offset, f"unknown blob codec {codec}")
    return object_id, size, codec


def _read_meta(src: _HashingReader, kind: int, limit: int) -> SnapshotRecord | CommitRecord:
    offset, name = src.offset - 1, _NAMES[kind]
    length = src.read_u32(f"{name} record length")
    if length > limit:
        raise OversizedRecord(f"{name} record", length, limit)
    payload = src.read_exact(length, f"{name} record")
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True, ext_hook=_refuse_ext)
    except _DECODE_ERRORS as exc:
        raise MalformedRecord(offset, f"{name} record is not valid msgpack: {exc}") from exc
    if not isinstance(data, dict):
        raise MalformedRecord(offset, f"{name} record is not a map")
    if kind == REC_SNAPSHOT:
        _check_snapshot(data, offset)
        return SnapshotRecord(data)
    _check_commit(data, offset)
    return CommitRecord(data)


def _refuse_ext(code: int, data: bytes) -> object:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def _check_snapshot(data: dict, offset: int) -> None:
    claimed = _field_id(data, "snapshot_id", "snapshot", offset)
    manifest = data.get("manifest")
    if not isinstance(manifest, dict) or not all(
        isinstance(path, str) and ids.is_id(object_id) for path, object_id in manifest.items()
    ):
        raise MalformedRecord(offset, "snapshot manifest must map str paths to object ids")
    if not isinstance(data.get("created_at"), str):
        raise MalformedRecord(offset, "snapshot created_at must be a str")
    _check_digest("snapshot", claimed, ids.snapshot_digest(manifest))


def _check_commit(data: dict, offset: int) -> None:
    claimed = _field_id(data, "commit_id", "commit", offset)
    snapshot_id = _field_id(data, "snapshot_id", "commit", offset)
    message, committed_at = data.get("message"), data.get("committed_at")
    if not isinstance(message, str) or not isinstance(committed_at, str):
        raise MalformedRecord(offset, "commit message and committed_at must be str")
    parents = []
    for key in ("parent_commit_id", "parent2_commit_id"):
        if key not in data or not (data[key] is None or ids.is_id(data[key])):
            raise MalformedRecord(offset, f"commit {key} must be an id or nil")
        if data[key] is not None:
            parents.append(data[key])
    _check_digest("commit", claimed, ids.commit_digest(parents, snapshot_id, message, committed_at))


def _field_id(data: dict, key: str, kind: str, offset: int) -> str:
    value = data.get(key)
    if not ids.is_id(value):
        raise MalformedRecord(offset, f"{kind} {key} is missing or not a well-formed id")
    return value


def _check_digest(kind: str, claimed: str, actual_hex: str) -> None:
    if not ids.same_digest(claimed, actual_hex):
        raise IdMismatch(kind, claimed, actual_hex)


def _read_trailer(src: _HashingReader, found: tuple[int, int, int, int]) -> Trailer:
    offset = src.offset - 1
    declared = _COUNTS.unpack(src.read_exact(_COUNTS.size, "trailer counts"))
    actual = src.hexdigest()
    expected = src.read_exact(32, "trailer checksum").hex()
    if expected != actual:
        raise ChecksumMismatch(expected, actual)
    if declared != found:
        raise MalformedRecord(offset, f"trailer counts {declared} differ from the records read {found}")
    if src.read_upto(1):
        raise MalformedRecord(src.offset - 1, "data after the trailer")
    return Trailer(*declared, checksum_hex=expected)
