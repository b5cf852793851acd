"""Reading mpacks: a streaming reader that verifies everything it yields.

The counterpart of ``mpack.format.writer``, on the byte layout of
``mpack.format.layout``. Memory stays bounded by a few chunks plus one
metadata record; every way a pack can be wrong raises an ``MPackError``
subclass (``mpack.format.errors``), and a caller applies nothing until the
final ``Trailer`` has been yielded.
"""
from __future__ import annotations

import hashlib
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import BinaryIO

import msgpack
import zstandard

from mpack.format import ids, rules
from mpack.format.errors import (
    BadMagic,
    ChecksumMismatch,
    IdMismatch,
    InvalidRecord,
    MalformedRecord,
    MissingBase,
    MPackError,
    OversizedRecord,
    Truncated,
    UnsupportedVersion,
)
from mpack.format.layout import (
    BLOB_TAIL,
    CHUNK_SIZE,
    CODEC_RAW,
    CODEC_ZSTD,
    COUNTS,
    DECODE_ERRORS,
    FLAGS,
    HEADER,
    MAGIC,
    MAX_META_RECORD,
    MAX_STORED_CHUNK,
    REC_BLOB,
    REC_COMMIT,
    REC_SNAPSHOT,
    REC_TRAILER,
    RECORD_NAMES,
    SNAPSHOT_KEYS,
    U32,
    VERSION,
    BlobRecord,
    CommitRecord,
    SnapshotRecord,
    Trailer,
    read_full,
)

# A receiver's own snapshots, by id: the manifest, or None when it does not hold that snapshot.
BaseResolver = Callable[[str], "Mapping[str, str] | None"]


class _HashingReader:
    """Reads exact lengths from a file while hashing them and tracking the offset."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._f = fileobj
        self._sha = hashlib.sha256()
        self.offset = 0

    def read_upto(self, n: int) -> bytes | bytearray:
        data = read_full(self._f, n)
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
        return U32.unpack(self.read_exact(4, what))[0]


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


def iter_mpack(fileobj: BinaryIO, *, max_meta_record: int = MAX_META_RECORD,
               snapshot_base: BaseResolver | None = None) -> Iterator[
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
        snapshot_base: Resolves the id of a snapshot the receiver holds to its
            manifest (None if unknown), for a first snapshot record that is a
            delta against one; without it such a pack raises ``MissingBase``.

    Raises:
        MPackError: A subclass naming what is wrong (from this generator, or
            from a blob's ``chunks``).
    """
    src = _HashingReader(fileobj)
    _read_header(src)
    dctx = zstandard.ZstdDecompressor()
    manifests = _Manifests(snapshot_base)
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
            yield _read_meta(src, kind, max_meta_record, dctx, manifests)
        counts[kind] += 1
    yield _read_trailer(src, (counts[REC_BLOB], counts[REC_SNAPSHOT], counts[REC_COMMIT], blob_bytes))


def verify_mpack(fileobj: BinaryIO, snapshot_base: BaseResolver | None = None) -> Trailer:
    """Read and verify a whole pack, discarding its content (``snapshot_base`` as for ``iter_mpack``).

    Returns:
        The verified trailer.

    Raises:
        MPackError: The pack is malformed, truncated or altered.
    """
    return deque(iter_mpack(fileobj, snapshot_base=snapshot_base), maxlen=1)[0]  # the last item is the Trailer


def _read_header(src: _HashingReader) -> None:
    head = src.read_upto(HEADER.size)
    if head[:len(MAGIC)] != MAGIC[:len(head)]:
        raise BadMagic(head)
    if len(head) < HEADER.size:
        raise Truncated(0, "header", HEADER.size, len(head))
    _, version, flags = HEADER.unpack(head)
    if version != VERSION or flags != FLAGS:
        raise UnsupportedVersion(version, flags, VERSION)


def _check_order(kind: int, stage: int, offset: int) -> int:
    if kind not in (REC_BLOB, REC_SNAPSHOT, REC_COMMIT):
        raise MalformedRecord(offset, f"unknown record type 0x{kind:02x}")
    if kind < stage:
        raise MalformedRecord(offset, f"{RECORD_NAMES[kind]} record after a {RECORD_NAMES[stage]} record")
    return kind


def _read_blob_head(src: _HashingReader) -> tuple[str, int, int]:
    offset = src.offset - 1
    raw_id = src.read_exact(src.read_u8("blob id length"), "blob id")
    object_id = raw_id.decode("ascii", errors="replace")
    if not ids.is_id(object_id):
        raise MalformedRecord(offset, f"blob id {object_id[:80]!r} is not a well-formed id")
    size, codec = BLOB_TAIL.unpack(src.read_exact(BLOB_TAIL.size, "blob size and codec"))
    if codec not in (CODEC_RAW, CODEC_ZSTD):
        raise MalformedRecord(offset, f"unknown blob codec {codec}")
    return object_id, size, codec


def _read_meta(src: _HashingReader, kind: int, limit: int, dctx: zstandard.ZstdDecompressor,
               manifests: _Manifests) -> SnapshotRecord | CommitRecord:
    offset, name = src.offset - 1, RECORD_NAMES[kind]
    codec = src.read_u8(f"{name} record codec")
    if codec not in (CODEC_RAW, CODEC_ZSTD):
        raise MalformedRecord(offset, f"unknown {name} record codec {codec}")
    length = src.read_u32(f"{name} record length")
    if length > limit:
        raise OversizedRecord(f"{name} record", length, limit)
    raw_len = src.read_u32(f"{name} record raw length") if codec == CODEC_ZSTD else length
    if raw_len > limit:
        raise OversizedRecord(f"{name} record", raw_len, limit)
    payload = src.read_exact(length, f"{name} record")
    if codec == CODEC_ZSTD:
        payload = _decompress(dctx, payload, raw_len, offset)
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True, ext_hook=_refuse_ext)
    except DECODE_ERRORS as exc:
        raise MalformedRecord(offset, f"{name} record is not valid msgpack: {exc}") from exc
    if not isinstance(data, dict):
        raise MalformedRecord(offset, f"{name} record is not a map")
    if kind == REC_SNAPSHOT:
        return manifests.apply(data, offset)
    _check_commit(data, offset)
    return CommitRecord(data)


def _refuse_ext(code: int, data: bytes) -> object:
    raise ValueError(f"msgpack extension type {code} is not allowed")


class _Manifests:
    """The manifest of the previous snapshot record: the base the next delta applies to.

    Holds one manifest as a dict and as its sorted ``path NUL id`` entries, so a
    delta costs work per changed entry (plus one join and one sha256 for the id).
    """

    def __init__(self, resolve: BaseResolver | None) -> None:
        self._resolve = resolve
        self._previous: str | None = None
        self._manifest: dict[str, str] = {}
        self._entries: list[str] = []

    def apply(self, data: dict, offset: int) -> SnapshotRecord:
        claimed = _field_id(data, "snapshot_id", "snapshot", offset)
        base, removed, changed, fields = _snapshot_parts(data, offset)
        self._start(base, offset)
        manifest, entries = self._manifest, self._entries
        for path in removed:
            if not isinstance(path, str) or path not in manifest:
                raise MalformedRecord(offset, f"snapshot removes {str(path)[:80]!r}, which its base does not hold")
            del entries[bisect_left(entries, f"{path}\0{manifest.pop(path)}")]
        for path, object_id in changed.items():  # the record rules, once per entry added or changed
            problem = rules.path_problem(path)
            if problem is not None:
                raise MalformedRecord(offset, f"snapshot.manifest[{repr(path)[:80]}]: path {problem}")
            if not ids.is_id(object_id):
                raise MalformedRecord(offset, f"snapshot.manifest[{path!r}]: object id is not a well-formed id")
            old = manifest.get(path)
            if old is not None:
                del entries[bisect_left(entries, f"{path}\0{old}")]
            manifest[path] = object_id
            if base is not None:
                insort(entries, f"{path}\0{object_id}")
        if base is None:
            entries[:] = sorted(f"{path}\0{object_id}" for path, object_id in manifest.items())
        _check_digest("snapshot", claimed, hashlib.sha256("\0".join(entries).encode("utf-8")).hexdigest())
        self._previous = claimed
        return SnapshotRecord({**fields, "snapshot_id": claimed, "manifest": dict(manifest)}, changed, base, removed)

    def _start(self, base: str | None, offset: int) -> None:
        if base is None:
            self._manifest, self._entries = {}, []
        elif self._previous is not None:
            if base[-64:] != self._previous[-64:]:
                raise MalformedRecord(offset, f"snapshot base {base} is not the previous snapshot record")
        else:
            held = self._resolve(base) if self._resolve is not None else None
            if held is None:
                raise MissingBase(base)
            self._manifest = dict(held)
            self._entries = sorted(f"{path}\0{object_id}" for path, object_id in self._manifest.items())


def _snapshot_parts(data: dict, offset: int) -> tuple[str | None, list, dict, dict]:
    if len(data) != len(SNAPSHOT_KEYS) or any(key not in data for key in SNAPSHOT_KEYS):
        raise MalformedRecord(offset, f"a snapshot record holds exactly the keys {', '.join(SNAPSHOT_KEYS)}")
    base, removed, changed, fields = data["base"], data["del"], data["set"], data["fields"]
    if not (base is None or ids.is_id(base)):
        raise MalformedRecord(offset, "snapshot base must be an id or nil")
    if not isinstance(removed, list) or not isinstance(changed, dict) or not isinstance(fields, dict):
        raise MalformedRecord(offset, "snapshot del, set and fields must be an array, a map and a map")
    if "snapshot_id" in fields or "manifest" in fields or not isinstance(fields.get("created_at", ""), str):
        raise MalformedRecord(offset, "snapshot fields must not hold snapshot_id or manifest; created_at is a str")
    return base, removed, changed, fields


def _check_commit(data: dict, offset: int) -> None:
    try:
        rules.check_commit_record(data)
    except InvalidRecord as exc:
        raise MalformedRecord(offset, exc.detail) from None
    parents = rules.commit_parents(data)
    _check_digest("commit", data["commit_id"],
                  ids.commit_digest(parents, data["snapshot_id"], data["message"], data["committed_at"]))


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
    declared = COUNTS.unpack(src.read_exact(COUNTS.size, "trailer counts"))
    actual = src.hexdigest()
    expected = src.read_exact(32, "trailer checksum").hex()
    if expected != actual:
        raise ChecksumMismatch(expected, actual)
    if declared != found:
        raise MalformedRecord(offset, f"trailer counts {declared} differ from the records read {found}")
    if src.read_upto(1):
        raise MalformedRecord(src.offset - 1, "data after the trailer")
    return Trailer(*declared, checksum_hex=expected, mpack_hex=src.hexdigest())
