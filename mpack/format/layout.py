"""The mpack byte layout: constants, record heads, the records a reader yields, and record encoding.

``docs/mpack-format.md`` specifies the layout; the writer (``mpack.format.writer``),
the streaming reader (``mpack.format.reader``) and the snapshot spill
(``mpack.format.spill``) share what is here, so each piece of the layout is
spelled once.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import msgpack
import zstandard

from mpack.format import ids
from mpack.format.errors import OversizedRecord

MAGIC = b"MUSE\0"
VERSION = 2
FLAGS = 0

REC_BLOB, REC_SNAPSHOT, REC_COMMIT, REC_TRAILER = 0x01, 0x02, 0x03, 0xFF
CODEC_RAW, CODEC_ZSTD = 0, 1

CHUNK_SIZE = 1 << 20  # raw bytes per blob chunk, at most
MAX_STORED_CHUNK = CHUNK_SIZE + (64 << 10)  # above zstd's worst-case expansion of 1 MiB
MAX_META_RECORD = 64 << 20  # encoded snapshot or commit, at most
SMALL_BLOB = 64 << 10  # a raw blob up to this size is written as one piece
BLOB_PROBE = 64 << 10  # a blob is compressed only if its first 64 KiB shrink by 10 %
MIN_META_COMPRESS = 1024  # shorter snapshot and commit records (most commits, most deltas) stay raw
SNAPSHOT_KEYS = ("base", "del", "fields", "set", "snapshot_id")  # a snapshot record's map, exactly

RECORD_NAMES = {REC_BLOB: "blob", REC_SNAPSHOT: "snapshot", REC_COMMIT: "commit"}
HEADER = struct.Struct(">5sBB")
U8 = struct.Struct(">B")
U32 = struct.Struct(">I")
BLOB_TAIL = struct.Struct(">QB")  # raw size, codec
META_HEAD = struct.Struct(">BBI")  # type, codec, stored length
COUNTS = struct.Struct(">QQQQ")  # blobs, snapshots, commits, raw blob bytes
U64_MAX = (1 << 64) - 1
DECODE_ERRORS = (ValueError, TypeError, RecursionError, msgpack.UnpackException)


@dataclass(frozen=True)
class Trailer:
    """The verified summary at the end of a pack."""

    blob_count: int
    snapshot_count: int
    commit_count: int
    blob_bytes: int
    checksum_hex: str
    mpack_hex: str = field(default="", compare=False)  # sha256 of the whole pack: its id


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
    """A snapshot dict whose ``snapshot_id`` matches its (rebuilt) manifest.

    ``changed`` holds the entries this record added or changed against its
    base (the previous snapshot record, or ``base`` for the first one, or
    nothing): the only entries that are new to a receiver holding the base.
    ``data`` is the whole snapshot; the reader builds a fresh dict per record.
    """

    data: dict
    changed: dict = field(default_factory=dict, repr=False, compare=False)
    base: str | None = field(default=None, compare=False)
    removed: list = field(default_factory=list, repr=False, compare=False)  # paths dropped from the base


@dataclass(frozen=True)
class CommitRecord:
    """A commit dict whose ``commit_id`` matches its fields."""

    data: dict



# -- encoding records ----------------------------------------------------------------

def snapshot_delta_record(snapshot_id: str, fields: dict, base_id: str | None, changed: dict,
                          removed: list, previous: str | None) -> dict:
    """The snapshot record of a delta (``MPackWriter.add_snapshot_delta``), checked; ``previous`` is
    the id of the snapshot record before it in the pack (None for the first).

    Raises:
        ValueError: a malformed id, a base that is not the previous record, or bad fields.
    """
    if not ids.is_id(snapshot_id) or not (base_id is None or ids.is_id(base_id)):
        raise ValueError(f"malformed snapshot or base id {snapshot_id!r} / {base_id!r}")
    if base_id is not None and previous is not None and base_id[-64:] != previous[-64:]:
        raise ValueError(f"snapshot {snapshot_id} must be a delta against the previous record, not {base_id}")
    if not isinstance(fields, dict) or "snapshot_id" in fields or "manifest" in fields:
        raise ValueError("snapshot fields must be a dict without snapshot_id or manifest")
    return {"base": base_id, "del": sorted(removed), "fields": fields, "set": changed, "snapshot_id": snapshot_id}


def meta_bytes(kind: int, record: dict, compressor: zstandard.ZstdCompressor) -> bytes:
    """A snapshot or commit record as the pack stores it: head, then the msgpack payload, zstd
    compressed when that saves 10 % (records under ``MIN_META_COMPRESS`` bytes stay raw).

    Raises:
        TypeError: ``record`` is not a dict.
        ValueError: it cannot be encoded (``encode_record``).
        OversizedRecord: it encodes to more than ``MAX_META_RECORD`` bytes.
    """
    if not isinstance(record, dict):
        raise TypeError(f"a {RECORD_NAMES[kind]} must be a dict, not {type(record).__name__}")
    payload = encode_record(record)
    if len(payload) > MAX_META_RECORD:
        raise OversizedRecord(f"{RECORD_NAMES[kind]} record", len(payload), MAX_META_RECORD)
    if len(payload) >= MIN_META_COMPRESS:
        frame = compressor.compress(payload)
        if len(frame) * 10 <= len(payload) * 9:
            return META_HEAD.pack(kind, CODEC_ZSTD, len(frame)) + U32.pack(len(payload)) + frame
    return META_HEAD.pack(kind, CODEC_RAW, len(payload)) + payload


def encode_record(record: dict) -> bytes:
    """Canonical msgpack of a snapshot or commit dict: str keys, sorted at every level.

    Raises:
        ValueError: A key is not a str, or a value msgpack cannot encode.
    """
    try:
        return msgpack.packb(_canonical(record), use_bin_type=True)
    except (TypeError, ValueError, OverflowError, RecursionError, msgpack.PackException) as exc:
        raise ValueError(f"record cannot be encoded: {exc}") from exc


# Values _canonical returns as they are, recognised by their exact type: no call per manifest entry
# or id (a 4× history's commit records encoded in 0.048 s instead of 0.081 s here).
_LEAVES = frozenset((str, int, float, bool, bytes, type(None)))


def _canonical(value: object) -> object:
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ValueError("dict keys in a record must be str")
        leaves, out = _LEAVES, {}
        for key in sorted(value):
            item = value[key]
            out[key] = item if type(item) in leaves else _canonical(item)
        return out
    if isinstance(value, (list, tuple)):
        leaves = _LEAVES
        return [item if type(item) in leaves else _canonical(item) for item in value]
    return value


def read_full(fileobj: BinaryIO, n: int) -> bytes | bytearray:
    """Read ``n`` bytes, looping over short reads; fewer only at end of file."""
    data = fileobj.read(n) or b""
    if 0 < len(data) < n:
        buf = bytearray(data)
        while len(buf) < n and (more := fileobj.read(min(n - len(buf), CHUNK_SIZE))):
            buf += more
        return buf
    return data
