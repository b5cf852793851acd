"""The mpack format: round-trips, determinism, and every way a pack is refused."""
from __future__ import annotations

import hashlib
import io
import random
import struct
import tracemalloc

import msgpack
import pytest
import zstandard

from mpack.format import ids
from mpack.format import spill as spill_module
from mpack.format.errors import (
    BadMagic,
    ChecksumMismatch,
    IdMismatch,
    MalformedRecord,
    MissingBase,
    MPackError,
    MuseError,
    OversizedRecord,
    Truncated,
    UnsupportedVersion,
)
from mpack.format.layout import (
    CHUNK_SIZE,
    CODEC_RAW,
    CODEC_ZSTD,
    MAX_META_RECORD,
    MAX_STORED_CHUNK,
    SMALL_BLOB,
    BlobRecord,
    CommitRecord,
    SnapshotRecord,
    Trailer,
    encode_record,
)
from mpack.format.order import canonical_order_commits
from mpack.format.reader import iter_mpack, verify_mpack
from mpack.format.spill import SnapshotSpill
from mpack.format.writer import MPackWriter

# -- factories: real records with correct ids ----------------------------------------

WHEN = "2024-05-01T12:00:00+00:00"


def make_blob(content: bytes, *, prefixed: bool = False) -> tuple[str, bytes]:
    digest = ids.object_digest(content)
    return (ids.PREFIX + digest if prefixed else digest), content


def make_snapshot(manifest: dict[str, str], *, created_at: str = WHEN, **extra) -> dict:
    return {"snapshot_id": ids.snapshot_digest(manifest), "manifest": manifest, "created_at": created_at, **extra}


def make_commit(snapshot: dict, parents: tuple[dict, ...] = (), *, message: str = "a commit",
                committed_at: str = WHEN, **extra) -> dict:
    parent_ids = [parent["commit_id"] for parent in parents]
    commit_id = ids.commit_digest(parent_ids, snapshot["snapshot_id"], message, committed_at)
    return {
        "commit_id": commit_id,
        "snapshot_id": snapshot["snapshot_id"],
        "message": message,
        "committed_at": committed_at,
        "parent_commit_id": parent_ids[0] if parent_ids else None,
        "parent2_commit_id": parent_ids[1] if len(parent_ids) > 1 else None,
        **extra,
    }


def make_history() -> tuple[list[tuple[str, bytes]], list[dict], list[dict]]:
    """Two blobs, two snapshots, and a root, two branches and a merge."""
    song = make_blob(b"la la la\n" * 50)
    drums = make_blob(bytes(range(256)), prefixed=True)
    first = make_snapshot({"song.txt": song[0]})
    second = make_snapshot({"song.txt": song[0], "drums.mid": drums[0]})
    root = make_commit(first, message="root")
    left = make_commit(second, (root,), message="left", metadata={"author": "ann", "tags": ["a", "b"]})
    right = make_commit(first, (root,), message="right", committed_at="2024-05-02T00:00:00+00:00")
    merge = make_commit(second, (left, right), message="merge", extra={"n": 3, "ok": True, "none": None})
    return [song, drums], [first, second], [root, left, right, merge]


def build_mpack(blobs=(), snapshots=(), commits=(), *, level: int = 3) -> bytes:
    out = io.BytesIO()
    writer = MPackWriter(out, level=level)
    for object_id, content in blobs:
        writer.add_blob(object_id, content, len(content))
    for snapshot in snapshots:
        writer.add_snapshot(snapshot)
    for commit in commits:
        writer.add_commit(commit)
    writer.finish()
    return out.getvalue()


def read_records(data: bytes) -> list:
    """Every item of the pack, blobs as (object_id, content) tuples."""
    items = []
    for item in iter_mpack(io.BytesIO(data)):
        if isinstance(item, BlobRecord):
            items.append((item.object_id, b"".join(item.chunks)))
        else:
            items.append(item)
    return items


def verify(data: bytes) -> Trailer:
    return verify_mpack(io.BytesIO(data))


# -- hand framing, straight from docs/mpack-format.md --------------------------------

def frame_pack(body: bytes = b"", counts=(0, 0, 0, 0), *, version: int = 2, flags: int = 0) -> bytes:
    before = b"MUSE\0" + bytes([version, flags]) + body + b"\xff" + struct.pack(">QQQQ", *counts)
    return before + hashlib.sha256(before).digest()


def blob_head(object_id: str, size: int, codec: int = 0) -> bytes:
    return bytes([0x01, len(object_id)]) + object_id.encode() + struct.pack(">QB", size, codec)


def raw_blob_record(object_id: str, content: bytes) -> bytes:
    pieces = [content[i:i + CHUNK_SIZE] for i in range(0, len(content), CHUNK_SIZE)]
    return blob_head(object_id, len(content)) + b"".join(struct.pack(">I", len(p)) + p for p in pieces) + bytes(4)


def meta_record(kind: int, payload: bytes) -> bytes:
    return bytes([kind, 0]) + struct.pack(">I", len(payload)) + payload


def full_snapshot_payload(snapshot: dict) -> bytes:
    """A snapshot as a v2 record with no base: every entry in ``set``."""
    fields = {k: v for k, v in snapshot.items() if k not in ("snapshot_id", "manifest")}
    return msgpack.packb({"base": None, "del": [], "fields": dict(sorted(fields.items())),
                          "set": dict(sorted(snapshot["manifest"].items())), "snapshot_id": snapshot["snapshot_id"]},
                         use_bin_type=True)


def sorted_msgpack(record: dict) -> bytes:
    return msgpack.packb(dict(sorted(record.items())), use_bin_type=True)


def pseudo_random(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


# -- round trip ----------------------------------------------------------------------

def test_round_trip_returns_every_record_in_order():
    blobs, snapshots, commits = make_history()
    items = read_records(build_mpack(blobs, snapshots, commits))
    assert items[:2] == blobs
    assert items[2:4] == [SnapshotRecord(s) for s in snapshots]
    assert items[4:8] == [CommitRecord(c) for c in commits]
    assert items[8] == Trailer(2, 2, 4, sum(len(c) for _, c in blobs), items[8].checksum_hex)


def test_round_trip_keeps_commit_extra_keys_verbatim():
    snapshot = make_snapshot({})
    extra = {"metadata": {"z": [1, -2, 2**64 - 1, -(2**63)], "a": {"deep": [None, True, False, 1.5]}},
             "raw": b"\x00\xff", "text": "üñí\0code", "empty": {}, "list": []}
    commit = make_commit(snapshot, **extra)
    [_, got, _] = read_records(build_mpack(snapshots=[snapshot], commits=[commit]))
    assert got.data == commit


def test_round_trip_empty_blob():
    blob = make_blob(b"")
    assert read_records(build_mpack([blob]))[0] == blob


def test_round_trip_empty_pack():
    assert read_records(build_mpack()) == [Trailer(0, 0, 0, 0, read_records(build_mpack())[0].checksum_hex)]


def test_compressible_multi_chunk_blob_is_zstd_in_bounded_chunks():
    object_id, content = make_blob(b"muse " * (CHUNK_SIZE // 2))  # 2.5 MiB
    record = next(iter_mpack(io.BytesIO(build_mpack([(object_id, content)]))))
    chunks = list(record.chunks)
    assert record.codec == CODEC_ZSTD
    assert [len(c) for c in chunks] == [CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE // 2]
    assert b"".join(chunks) == content


def test_random_multi_chunk_blob_is_stored_raw():
    blob = make_blob(pseudo_random(CHUNK_SIZE * 2 + 17))
    data = build_mpack([blob])
    record = next(iter_mpack(io.BytesIO(data)))
    assert record.codec == CODEC_RAW
    assert b"".join(record.chunks) == blob[1]


def test_both_id_spellings_are_kept_as_given():
    plain, prefixed = make_blob(b"one"), make_blob(b"two", prefixed=True)
    items = read_records(build_mpack([plain, prefixed]))
    assert [items[0][0], items[1][0]] == [plain[0], prefixed[0]]


def test_blob_read_from_a_file_with_short_reads():
    class Trickle(io.RawIOBase):
        def __init__(self, data):
            self._data = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, buffer):
            piece = self._data.read(min(len(buffer), 1000))
            buffer[:len(piece)] = piece
            return len(piece)

    object_id, content = make_blob(pseudo_random(CHUNK_SIZE + 5000))
    out = io.BytesIO()
    writer = MPackWriter(out)
    writer.add_blob(object_id, Trickle(content), len(content))
    writer.finish()
    assert out.getvalue() == build_mpack([(object_id, content)])
    assert read_records(bytes(Trickle(out.getvalue()).read()))[0] == (object_id, content)


def test_writer_output_matches_the_documented_layout():
    blob = make_blob(pseudo_random(300))
    snapshot = make_snapshot({"a": blob[0]})
    commit = make_commit(snapshot)
    body = raw_blob_record(*blob) + meta_record(2, full_snapshot_payload(snapshot)) \
        + meta_record(3, sorted_msgpack(commit))
    assert build_mpack([blob], [snapshot], [commit]) == frame_pack(body, (1, 1, 1, 300))


def test_the_documented_example_has_the_documented_id():
    blob = make_blob(b"hi\n")
    data = build_mpack([blob], [make_snapshot({"a.txt": blob[0]}, created_at="2024-05-01T12:00:00Z")])
    assert len(data) == 371
    assert hashlib.sha256(data).hexdigest() == "8f69bf8499a0ea7bcddfeb37ed60cbdadfd2c4d693f8e359bc07c56d0a60c752"


def test_writer_sha256_is_the_sha256_of_the_file():
    out = io.BytesIO()
    writer = MPackWriter(out)
    writer.add_blob(*make_blob(b"x"), 1)
    trailer = writer.finish()
    assert writer.sha256_hex == hashlib.sha256(out.getvalue()).hexdigest()
    assert writer.bytes_written == len(out.getvalue())
    assert trailer.checksum_hex == hashlib.sha256(out.getvalue()[:-32]).hexdigest()


def test_verify_returns_the_trailer():
    blobs, snapshots, commits = make_history()
    trailer = verify(build_mpack(blobs, snapshots, commits))
    assert (trailer.blob_count, trailer.snapshot_count, trailer.commit_count) == (2, 2, 4)


def test_unread_chunks_are_drained_and_checked():
    blobs, snapshots, _ = make_history()
    items = list(iter_mpack(io.BytesIO(build_mpack(blobs, snapshots))))
    assert [type(item) for item in items] == [BlobRecord, BlobRecord, SnapshotRecord, SnapshotRecord, Trailer]


# -- determinism ---------------------------------------------------------------------

def test_same_records_give_the_same_bytes():
    history = make_history()
    assert build_mpack(*history) == build_mpack(*history)


def test_dict_key_order_does_not_change_the_bytes():
    snapshot = make_snapshot({})
    commit = make_commit(snapshot, metadata={"b": 1, "a": {"y": 2, "x": 3}})
    shuffled = dict(reversed(commit.items()))
    shuffled["metadata"] = {"a": {"x": 3, "y": 2}, "b": 1}
    assert build_mpack(commits=[commit]) == build_mpack(commits=[shuffled])


def test_record_encoding_sorts_keys_at_every_level():
    assert encode_record({"b": {"d": 1, "c": 2}, "a": [{"f": 1, "e": 2}]}) == msgpack.packb(
        {"a": [{"e": 2, "f": 1}], "b": {"c": 2, "d": 1}}, use_bin_type=True)


# -- writer misuse: ValueError, not MPackError ---------------------------------------

@pytest.mark.parametrize("late, early", [("blob", "snapshot"), ("blob", "commit"), ("snapshot", "commit")])
def test_writer_refuses_records_out_of_order(late, early):
    snapshot = make_snapshot({})
    adds = {"blob": lambda w: w.add_blob(*make_blob(b""), 0), "snapshot": lambda w: w.add_snapshot(snapshot),
            "commit": lambda w: w.add_commit(make_commit(snapshot))}
    writer = MPackWriter(io.BytesIO())
    adds[early](writer)
    with pytest.raises(ValueError, match="blobs, then snapshots, then commits"):
        adds[late](writer)


def test_writer_refuses_bytes_of_another_size():
    with pytest.raises(ValueError, match="holds 3 bytes"):
        MPackWriter(io.BytesIO()).add_blob(*make_blob(b"abc"), 4)


def test_writer_refuses_a_file_that_ends_early():
    object_id, content = make_blob(b"abc")
    with pytest.raises(ValueError, match="ended after 3 bytes"):
        MPackWriter(io.BytesIO()).add_blob(object_id, io.BytesIO(content), 4)


def test_writer_refuses_a_file_longer_than_size():
    object_id, content = make_blob(b"abc")
    with pytest.raises(ValueError, match="more than 2 bytes"):
        MPackWriter(io.BytesIO()).add_blob(object_id, io.BytesIO(content), 2)


def test_writer_is_unusable_after_a_half_written_blob():
    writer = MPackWriter(io.BytesIO())
    object_id, content = make_blob(pseudo_random(CHUNK_SIZE + 10))
    with pytest.raises(ValueError):
        writer.add_blob(object_id, io.BytesIO(content[:-1]), len(content))
    with pytest.raises(ValueError, match="unusable"):
        writer.finish()


def test_writer_refuses_anything_after_finish():
    writer = MPackWriter(io.BytesIO())
    writer.finish()
    with pytest.raises(ValueError, match="finished"):
        writer.add_snapshot(make_snapshot({}))


def test_writer_refuses_a_malformed_object_id():
    with pytest.raises(ValueError, match="malformed object id"):
        MPackWriter(io.BytesIO()).add_blob("not-an-id", b"", 0)


@pytest.mark.parametrize("record", [{1: "int key"}, {"value": {1, 2}}, {"deep": {"k": object()}}])
def test_writer_refuses_a_record_msgpack_cannot_encode(record):
    with pytest.raises(ValueError, match="cannot be encoded"):
        MPackWriter(io.BytesIO()).add_commit(record)


def test_writer_refuses_a_record_over_the_limit():
    with pytest.raises(OversizedRecord):
        MPackWriter(io.BytesIO()).add_commit({"huge": "x" * MAX_META_RECORD})


def test_writer_refuses_a_bad_level():
    with pytest.raises(ValueError, match="level"):
        MPackWriter(io.BytesIO(), level=0)


# -- header errors -------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"PACK\0\x01\x00", b"GIT", b"\x00" * 100, b"muse\0\x01\x00"])
def test_bad_magic(data):
    with pytest.raises(BadMagic):
        verify(data)


@pytest.mark.parametrize("version, flags", [(0, 0), (1, 0), (3, 0), (2, 1), (255, 128)])
def test_unsupported_version_or_flags(version, flags):
    with pytest.raises(UnsupportedVersion) as info:
        verify(frame_pack(version=version, flags=flags))
    assert (info.value.version, info.value.flags) == (version, flags)


# -- truncation ----------------------------------------------------------------------

HISTORY_PACK = build_mpack(*make_history())
RAW_BLOB = make_blob(pseudo_random(100))
SMALL_PACK = build_mpack([RAW_BLOB], [make_snapshot({"a": RAW_BLOB[0]})])
# header 7 | blob: type 1, id 1+64, size+codec 9, chunk 4+100, end 4 -> 190 | snapshot | trailer 65
CUTS = {"empty": 0, "in magic": 3, "before flags": 6, "no records": 7, "in blob id": 40, "in blob size": 75,
        "in chunk length": 84, "in chunk": 150, "before blob end": 187, "in snapshot length": 192,
        "in snapshot": 220, "before trailer": len(SMALL_PACK) - 65, "in counts": len(SMALL_PACK) - 40,
        "in checksum": len(SMALL_PACK) - 1}


@pytest.mark.parametrize("cut", CUTS.values(), ids=CUTS.keys())
def test_truncated(cut):
    with pytest.raises(Truncated):
        verify(SMALL_PACK[:cut])


def test_truncated_names_the_field_and_offset():
    with pytest.raises(Truncated) as info:
        verify(SMALL_PACK[:150])
    assert (info.value.what, info.value.offset, info.value.got) == ("chunk data", 86, 64)


# -- checksum and id errors ----------------------------------------------------------

def test_flipped_checksum():
    data = bytearray(HISTORY_PACK)
    data[-1] ^= 0x01
    with pytest.raises(ChecksumMismatch) as info:
        verify(bytes(data))
    assert info.value.expected == bytes(data[-32:]).hex()
    assert info.value.actual == hashlib.sha256(HISTORY_PACK[:-32]).hexdigest()


def test_altered_metadata_is_caught_by_the_checksum_after_every_record():
    snapshot = make_snapshot({})
    data = build_mpack(snapshots=[snapshot], commits=[make_commit(snapshot, note="aaaa")]).replace(b"aaaa", b"aaab")
    items = iter_mpack(io.BytesIO(data))
    assert isinstance(next(items), SnapshotRecord)
    assert next(items).data["note"] == "aaab"
    with pytest.raises(ChecksumMismatch):
        next(items)


def test_blob_id_mismatch_is_raised_when_its_chunks_are_exhausted():
    wrong = ids.object_digest(b"something else")
    record = next(iter_mpack(io.BytesIO(build_mpack([(wrong, b"content")]))))
    assert next(record.chunks) == b"content"
    with pytest.raises(IdMismatch) as info:
        next(record.chunks)
    assert (info.value.kind, info.value.claimed, info.value.actual) == ("blob", wrong, ids.object_digest(b"content"))


def test_blob_id_mismatch_is_raised_before_the_next_record_when_chunks_are_skipped():
    items = iter_mpack(io.BytesIO(build_mpack([(ids.object_digest(b"x"), b"y")], [make_snapshot({})])))
    next(items)
    with pytest.raises(IdMismatch):
        next(items)


def test_blob_id_mismatch_is_sticky():
    record = next(iter_mpack(io.BytesIO(build_mpack([(ids.object_digest(b"x"), b"y")]))))
    for _ in range(2):
        with pytest.raises(IdMismatch):
            list(record.chunks)


def test_altered_blob_content_is_an_id_mismatch():
    data = bytearray(SMALL_PACK)
    data[100] ^= 0xFF  # inside the raw chunk
    with pytest.raises(IdMismatch):
        verify(bytes(data))


def test_snapshot_id_mismatch():
    snapshot = make_snapshot({"a": RAW_BLOB[0]})
    snapshot["manifest"] = {"b": RAW_BLOB[0]}
    with pytest.raises(IdMismatch) as info:
        verify(build_mpack(snapshots=[snapshot]))
    assert info.value.kind == "snapshot"


@pytest.mark.parametrize("field, value", [("message", "edited"), ("committed_at", "later"),
                                          ("parent_commit_id", "a" * 64), ("snapshot_id", "b" * 64)])
def test_commit_id_mismatch(field, value):
    commit = make_commit(make_snapshot({}))
    commit[field] = value
    with pytest.raises(IdMismatch) as info:
        verify(build_mpack(commits=[commit]))
    assert (info.value.kind, info.value.claimed) == ("commit", commit["commit_id"])


def test_commit_second_parent_counts_in_its_id():
    history = make_history()
    merge = history[2][3]
    merge["parent2_commit_id"] = None
    with pytest.raises(IdMismatch):
        verify(build_mpack(commits=[merge]))


# -- oversized lengths ---------------------------------------------------------------

def test_record_longer_than_the_limit_is_oversized():
    with pytest.raises(OversizedRecord) as info:
        list(iter_mpack(io.BytesIO(HISTORY_PACK), max_meta_record=50))
    assert info.value.limit == 50


def test_bogus_record_length_is_refused_before_any_allocation():
    data = frame_pack(b"\x02\x00\xff\xff\xff\xff" + b"\x80", (0, 1, 0, 0))
    tracemalloc.start()
    try:
        with pytest.raises(OversizedRecord):
            verify(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_raw_chunk_over_one_mib_is_oversized():
    body = blob_head(RAW_BLOB[0], 2 * CHUNK_SIZE) + struct.pack(">I", CHUNK_SIZE + 1)
    with pytest.raises(OversizedRecord):
        verify(frame_pack(body))


def test_zstd_chunk_stored_length_over_the_bound_is_oversized():
    body = blob_head(RAW_BLOB[0], 100, codec=1) + struct.pack(">II", MAX_STORED_CHUNK + 1, 100)
    with pytest.raises(OversizedRecord):
        verify(frame_pack(body))


# -- malformed records ---------------------------------------------------------------

def test_trailing_garbage():
    with pytest.raises(MalformedRecord, match="after the trailer"):
        verify(HISTORY_PACK + b"\0")


@pytest.mark.parametrize("order", [(3, 1), (2, 1), (3, 2)])
def test_reader_refuses_record_types_out_of_order(order):
    snapshot = make_snapshot({})
    records = {1: raw_blob_record(*RAW_BLOB), 2: meta_record(2, full_snapshot_payload(snapshot)),
               3: meta_record(3, sorted_msgpack(make_commit(snapshot)))}
    counts = [0, 0, 0]
    for kind in order:
        counts[kind - 1] += 1
    with pytest.raises(MalformedRecord, match="record after a"):
        verify(frame_pack(b"".join(records[k] for k in order), (*counts, 100 * counts[0])))


def test_unknown_record_type():
    with pytest.raises(MalformedRecord, match="unknown record type 0x04"):
        verify(frame_pack(b"\x04"))


def test_unknown_codec():
    with pytest.raises(MalformedRecord, match="codec"):
        verify(frame_pack(blob_head(RAW_BLOB[0], 0, codec=2) + bytes(4), (1, 0, 0, 0)))


def test_trailer_counts_that_differ_from_the_records():
    with pytest.raises(MalformedRecord, match="trailer counts"):
        verify(frame_pack(raw_blob_record(*RAW_BLOB), (2, 0, 0, 100)))


def test_blob_that_ends_before_its_declared_size():
    body = blob_head(RAW_BLOB[0], 101) + struct.pack(">I", 100) + RAW_BLOB[1] + bytes(4)
    with pytest.raises(MalformedRecord, match="short of its declared size"):
        verify(frame_pack(body, (1, 0, 0, 101)))


def test_chunk_that_runs_past_the_declared_size():
    body = blob_head(RAW_BLOB[0], 99) + struct.pack(">I", 100) + RAW_BLOB[1] + bytes(4)
    with pytest.raises(MalformedRecord, match="left in the blob"):
        verify(frame_pack(body, (1, 0, 0, 99)))


def test_zstd_frame_declaring_another_length():
    frame = zstandard.ZstdCompressor().compress(RAW_BLOB[1][:50])
    body = blob_head(RAW_BLOB[0], 100, codec=1) + struct.pack(">II", len(frame), 100) + frame + bytes(4)
    with pytest.raises(MalformedRecord, match="zstd"):
        verify(frame_pack(body, (1, 0, 0, 100)))


def test_zstd_chunk_that_is_not_zstd():
    body = blob_head(RAW_BLOB[0], 100, codec=1) + struct.pack(">II", 100, 100) + RAW_BLOB[1] + bytes(4)
    with pytest.raises(MalformedRecord, match="zstd"):
        verify(frame_pack(body, (1, 0, 0, 100)))


def test_blob_id_that_is_not_an_id():
    body = bytes([1, 3]) + b"abc" + struct.pack(">QB", 0, 0) + bytes(4)
    with pytest.raises(MalformedRecord, match="not a well-formed id"):
        verify(frame_pack(body, (1, 0, 0, 0)))


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x91\x01", b"\x81\x01\x02", b"\x80\x80",
                                     msgpack.packb(msgpack.ExtType(5, b"x"))])
def test_snapshot_record_that_is_not_a_msgpack_map(payload):
    with pytest.raises(MalformedRecord):
        verify(frame_pack(meta_record(2, payload), (0, 1, 0, 0)))


def snapshot_pack(*payloads: dict) -> bytes:
    body = b"".join(meta_record(2, msgpack.packb(p, use_bin_type=True)) for p in payloads)
    return frame_pack(body, (0, len(payloads), 0, 0))


def full_delta(manifest: dict, **fields) -> dict:
    return {"base": None, "del": [], "fields": {"created_at": WHEN, **fields}, "set": manifest,
            "snapshot_id": ids.snapshot_digest(manifest)}


@pytest.mark.parametrize("change", [{"set": ["a"]}, {"set": {"a": "not-an-id"}}, {"set": {1: RAW_BLOB[0]}},
                                    {"fields": {"created_at": 5}}, {"fields": []}, {"fields": {"manifest": {}}},
                                    {"snapshot_id": None}, {"base": "HEAD"}, {"del": "a"}, {"del": ["absent"]},
                                    {"extra": 1}, {"set": {"../escape": RAW_BLOB[0]}}, {"set": {".muse/HEAD": RAW_BLOB[0]}},
                                    {"set": {"a\\b": RAW_BLOB[0]}}])
def test_snapshot_of_the_wrong_shape(change):
    with pytest.raises(MalformedRecord):
        verify(snapshot_pack({**full_delta({"a": RAW_BLOB[0]}), **change}))


def test_snapshot_record_without_one_of_its_keys():
    for key in ("base", "del", "fields", "set", "snapshot_id"):
        record = full_delta({"a": RAW_BLOB[0]})
        del record[key]
        with pytest.raises(MalformedRecord):
            verify(snapshot_pack(record))


def test_snapshot_delta_against_a_record_that_is_not_the_previous_one():
    first, second = full_delta({"a": RAW_BLOB[0]}), full_delta({"b": RAW_BLOB[0]})
    third = {**full_delta({"a": RAW_BLOB[0], "c": RAW_BLOB[0]}), "base": first["snapshot_id"], "set": {"c": RAW_BLOB[0]}}
    with pytest.raises(MalformedRecord, match="not the previous snapshot record"):
        verify(snapshot_pack(first, second, third))


def test_snapshot_delta_whose_result_is_not_its_id():
    first = full_delta({"a": RAW_BLOB[0]})
    second = {**full_delta({"a": RAW_BLOB[0], "b": RAW_BLOB[0]}), "base": first["snapshot_id"], "set": {}}
    with pytest.raises(IdMismatch):
        verify(snapshot_pack(first, second))


def test_a_first_snapshot_against_an_unknown_base_is_missing_its_base():
    first = {**full_delta({"a": RAW_BLOB[0]}), "base": "c" * 64}
    with pytest.raises(MissingBase) as info:
        verify(snapshot_pack(first))
    assert info.value.base == "c" * 64
    with pytest.raises(MissingBase):
        verify_mpack(io.BytesIO(snapshot_pack(first)), snapshot_base=lambda base_id: None)


def test_a_first_snapshot_against_a_base_the_receiver_holds():
    held = {"old": RAW_BLOB[0], "keep": RAW_BLOB[0]}
    wanted = {"keep": RAW_BLOB[0], "new": ids.object_digest(b"n")}
    out = io.BytesIO()
    writer = MPackWriter(out)
    writer.add_snapshot(make_snapshot(wanted), base=("d" * 64, held))
    writer.finish()
    items = list(iter_mpack(io.BytesIO(out.getvalue()), snapshot_base={"d" * 64: held}.get))
    assert items[0].data["manifest"] == wanted and items[0].changed == {"new": wanted["new"]}
    assert items[0].base == "d" * 64


@pytest.mark.parametrize("change", [{"message": None}, {"committed_at": 1}, {"parent_commit_id": "HEAD"},
                                    {"commit_id": "sha256:abc"}, {"snapshot_id": 7}])
def test_commit_of_the_wrong_shape(change):
    commit = {**make_commit(make_snapshot({})), **change}
    with pytest.raises(MalformedRecord):
        verify(build_mpack(commits=[commit]))


def test_commit_without_its_parent_keys_reads_as_no_parents():
    """The hub accepts pushes whose commits omit the parent keys; packs of them must read back."""
    commit = make_commit(make_snapshot({}))
    del commit["parent2_commit_id"]
    assert verify(build_mpack(commits=[commit])).commit_count == 1


def test_every_format_error_is_a_hub_error():
    for cls in (BadMagic, UnsupportedVersion, Truncated, ChecksumMismatch, IdMismatch, OversizedRecord,
                MalformedRecord, MissingBase):
        assert issubclass(cls, MPackError) and issubclass(cls, MuseError)


# -- canonical commit order ----------------------------------------------------------

def test_canonical_order_puts_parents_first():
    root, left, right, merge = make_history()[2]
    ordered = canonical_order_commits([merge, right, left, root])
    position = {c["commit_id"]: i for i, c in enumerate(ordered)}
    assert position[root["commit_id"]] == 0 and position[merge["commit_id"]] == 3


def test_canonical_order_places_a_merge_after_both_parents():
    root, left, right, merge = make_history()[2]
    ordered = [c["commit_id"] for c in canonical_order_commits([merge, left, right, root])]
    assert ordered.index(merge["commit_id"]) > max(ordered.index(left["commit_id"]), ordered.index(right["commit_id"]))


def test_canonical_order_breaks_ties_by_commit_id():
    root, left, right, _ = make_history()[2]
    ordered = canonical_order_commits([right, root, left])
    assert [c["commit_id"] for c in ordered[1:]] == sorted([left["commit_id"], right["commit_id"]])


def test_canonical_order_ignores_input_order():
    commits = make_history()[2]
    expected = canonical_order_commits(commits)
    rng = random.Random(1)
    for _ in range(20):
        shuffled = commits[:]
        rng.shuffle(shuffled)
        assert canonical_order_commits(shuffled) == expected


def test_canonical_order_ignores_parents_outside_the_list():
    _, left, right, merge = make_history()[2]
    ordered = canonical_order_commits([merge, right, left])
    assert ordered[-1] == merge


def test_canonical_order_handles_long_chains_without_recursion():
    chain, parent = [], None
    for i in range(5000):
        commit = {"commit_id": f"{i:064x}", "parent_commit_id": parent, "parent2_commit_id": None}
        chain.append(commit)
        parent = commit["commit_id"]
    assert canonical_order_commits(chain[::-1]) == chain


def test_canonical_order_refuses_duplicates():
    root = make_history()[2][0]
    with pytest.raises(ValueError, match="twice"):
        canonical_order_commits([root, dict(root)])


def test_canonical_order_refuses_a_cycle():
    a = {"commit_id": "a" * 64, "parent_commit_id": "b" * 64, "parent2_commit_id": None}
    b = {"commit_id": "b" * 64, "parent_commit_id": "a" * 64, "parent2_commit_id": None}
    with pytest.raises(ValueError, match="cycle"):
        canonical_order_commits([a, b])


# -- bounded memory ------------------------------------------------------------------

class GeneratedBlob:
    """A large blob made on the fly, half zeros and half noise per MiB, in short reads."""

    def __init__(self, size: int) -> None:
        self._size, self._pos, self._index, self._block = size, 0, -1, bytearray(CHUNK_SIZE)

    def read(self, n: int) -> bytes:
        index, offset = divmod(self._pos, CHUNK_SIZE)
        if self._index != index:
            self._index = index
            self._block[CHUNK_SIZE // 2:] = random.Random(index).randbytes(CHUNK_SIZE // 2)
        piece = bytes(self._block[offset:offset + min(n, 256 << 10, self._size - self._pos)])
        self._pos += len(piece)
        return piece


def test_a_64_mib_blob_is_written_and_read_in_bounded_memory(tmp_path):
    size = 64 << 20
    digest = hashlib.sha256()
    source = GeneratedBlob(size)
    while piece := source.read(CHUNK_SIZE):
        digest.update(piece)
    path = tmp_path / "big.mpack"
    tracemalloc.start()
    try:
        with path.open("wb") as out:
            writer = MPackWriter(out)
            writer.add_blob(digest.hexdigest(), GeneratedBlob(size), size)
            writer.finish()
        with path.open("rb") as pack:
            items = iter_mpack(pack)
            record = next(items)
            total = sum(len(chunk) for chunk in record.chunks)
            trailer = next(items)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (record.codec, total, trailer.blob_bytes) == (CODEC_ZSTD, size, size)
    assert peak < 8 << 20


# -- format version 2: snapshot deltas, v1 refused -------------------------------------

def v1_example_pack() -> bytes:
    """The documented v1 example (docs/mpack-format.md, "Version 1"), framed by hand as v1 wrote it."""
    blob = make_blob(b"hi\n")
    snapshot = make_snapshot({"a.txt": blob[0]}, created_at="2024-05-01T12:00:00Z")
    body = raw_blob_record(*blob) + bytes([2]) + struct.pack(">I", len(sorted_msgpack(snapshot))) \
        + msgpack.packb({"created_at": snapshot["created_at"], "manifest": snapshot["manifest"],
                         "snapshot_id": snapshot["snapshot_id"]}, use_bin_type=True)
    return frame_pack(body, (1, 1, 0, 3), version=1)


def test_a_v1_pack_is_refused_naming_its_version():
    data = v1_example_pack()
    assert hashlib.sha256(data).hexdigest() == "56488f8e61aa799e8fb72b26144ae105bfd037f5c720779aafc408cd0cef48f1"
    with pytest.raises(UnsupportedVersion) as info:
        verify(data)
    assert (info.value.version, info.value.supported) == (1, 2)
    assert "mpack version 1" in str(info.value) and "reads version 2" in str(info.value)


def evolving_snapshots() -> list[dict]:
    """Adds, changes, removals, a rename, an empty manifest and a return to an earlier manifest."""
    a, b, c = (make_blob(x)[0] for x in (b"a", b"b", b"c"))
    manifests = [{"x": a, "y": b}, {"x": a, "y": c, "z/\u00e9": b}, {"x": a, "w": c, "z/\u00e9": b},
                 {}, {"only": a}, {"x": a, "y": b}]
    return [make_snapshot(m, created_at=f"t{n}") for n, m in enumerate(manifests)]


def test_snapshot_deltas_round_trip_whole_snapshots():
    snapshots = evolving_snapshots()
    items = [i for i in read_records(build_mpack(snapshots=snapshots)) if isinstance(i, SnapshotRecord)]
    assert [i.data for i in items] == snapshots
    assert [i.changed for i in items][:3] == [snapshots[0]["manifest"], {"y": make_blob(b"c")[0],
                                              "z/\u00e9": make_blob(b"b")[0]}, {"w": make_blob(b"c")[0]}]
    assert [i.base for i in items][1:] == [s["snapshot_id"] for s in snapshots[:-1]]


def test_snapshot_records_are_deltas_not_whole_manifests():
    big = {f"dir/file{n:04}.txt": make_blob(str(n).encode())[0] for n in range(500)}
    one_more = {**big, "new.txt": make_blob(b"new")[0]}
    whole = len(build_mpack(snapshots=[make_snapshot(one_more)]))
    both = len(build_mpack(snapshots=[make_snapshot(big), make_snapshot(one_more)]))
    assert both - whole < 400  # the second record carries one entry, not 501


def test_written_deltas_equal_the_writers_own_diff():
    snapshots = evolving_snapshots()
    out = io.BytesIO()
    writer = MPackWriter(out)
    previous: dict = {}
    for n, snapshot in enumerate(snapshots):
        manifest = snapshot["manifest"]
        changed = {p: o for p, o in manifest.items() if previous.get(p) != o}
        removed = [p for p in previous if p not in manifest]
        writer.add_snapshot_delta(snapshot["snapshot_id"], {"created_at": snapshot["created_at"]},
                                  snapshots[n - 1]["snapshot_id"] if n else None, changed, removed)
        previous = manifest
    writer.finish()
    assert out.getvalue() == build_mpack(snapshots=snapshots)


def _deltas_of(snapshots: list[dict]) -> list[tuple]:
    """add_snapshot_delta's arguments for each snapshot, against the one before."""
    calls, previous = [], {}
    for n, snapshot in enumerate(snapshots):
        manifest = snapshot["manifest"]
        calls.append((snapshot["snapshot_id"], {"created_at": snapshot["created_at"]},
                      snapshots[n - 1]["snapshot_id"] if n else None,
                      {p: o for p, o in manifest.items() if previous.get(p) != o},
                      [p for p in previous if p not in manifest]))
        previous = manifest
    return calls


@pytest.mark.parametrize("in_memory", [1 << 20, 16], ids=["in-memory", "on-disk"])
def test_spilled_snapshot_records_give_the_same_pack_bytes(monkeypatch, in_memory):
    """A build encodes its snapshot records before writing the blobs they follow (flat memory): same bytes."""
    monkeypatch.setattr(spill_module, "IN_MEMORY", in_memory)
    snapshots = evolving_snapshots()
    blob = make_blob(b"a")
    out = io.BytesIO()
    writer = MPackWriter(out)
    with SnapshotSpill() as spill:
        for call in _deltas_of(snapshots):
            spill.add_delta(*call)
        writer.add_blob(*blob, 1)
        writer.add_spilled_snapshots(spill)
        assert spill._file._rolled == (in_memory == 16)
    writer.finish()
    assert out.getvalue() == build_mpack(blobs=[blob], snapshots=snapshots)


def test_a_spill_checks_its_deltas_as_the_writer_does():
    snapshots = evolving_snapshots()
    with SnapshotSpill() as spill:
        spill.add_delta(*_deltas_of(snapshots)[0])
        with pytest.raises(ValueError, match="previous record"):
            spill.add_delta(snapshots[2]["snapshot_id"], {}, snapshots[1]["snapshot_id"], {}, [])


def test_spilled_records_after_commits_are_refused():
    snapshots = evolving_snapshots()
    writer = MPackWriter(io.BytesIO())
    writer.add_commit(make_commit(snapshots[0]))
    with SnapshotSpill() as spill, pytest.raises(ValueError, match="a pack holds blobs, then snapshots"):
        writer.add_spilled_snapshots(spill)


def test_writer_refuses_a_delta_against_anything_but_the_previous_record():
    snapshots = evolving_snapshots()
    writer = MPackWriter(io.BytesIO())
    writer.add_snapshot(snapshots[0])
    writer.add_snapshot(snapshots[1])
    with pytest.raises(ValueError, match="previous record"):
        writer.add_snapshot_delta(snapshots[2]["snapshot_id"], {}, snapshots[0]["snapshot_id"], {}, [])
    with pytest.raises(ValueError, match="first snapshot"):
        writer.add_snapshot(snapshots[2], base=(snapshots[0]["snapshot_id"], snapshots[0]["manifest"]))


def test_a_large_first_snapshot_is_compressed_and_reads_back():
    manifest = {f"src/module{n:05}.py": make_blob(str(n).encode())[0] for n in range(2000)}
    data = build_mpack(snapshots=[make_snapshot(manifest)])
    assert len(data) < 2000 * 70 * 0.9  # the raw entries alone are ~90 bytes each
    assert read_records(data)[0].data["manifest"] == manifest


def test_the_reader_holds_one_manifest_however_many_snapshots():
    manifest = {f"f{n:05}": make_blob(str(n).encode())[0] for n in range(3000)}
    snapshots = []
    for n in range(60):
        manifest = {**manifest, f"f{n:05}": make_blob(f"v{n}".encode())[0]}
        snapshots.append(make_snapshot(manifest))
    data = build_mpack(snapshots=snapshots)
    tracemalloc.start()
    try:
        assert verify(data).snapshot_count == 60
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 << 20  # one manifest of 3,000 entries is ~1.5 MB; sixty would be ~90 MB


def test_a_delta_entry_breaking_the_path_rules_is_refused_where_it_is_added():
    first = full_delta({"a": RAW_BLOB[0]})
    second = {**full_delta({"a": RAW_BLOB[0], "x/../../y": RAW_BLOB[0]}), "base": first["snapshot_id"],
              "set": {"x/../../y": RAW_BLOB[0]}}
    with pytest.raises(MalformedRecord, match="x/../../y"):
        verify(snapshot_pack(first, second))


@pytest.mark.parametrize("compress", [False, True])
def test_small_blobs_added_together_are_the_same_bytes_as_added_one_by_one(compress):
    rng = random.Random(7)
    contents = [b"", b"a", rng.randbytes(SMALL_BLOB), b"la " * 3000, rng.randbytes(100), b"\0" * 70]
    blobs = [make_blob(c, prefixed=n % 2 == 0) for n, c in enumerate(contents)]

    def pack(together: bool) -> bytes:
        out = io.BytesIO()
        writer = MPackWriter(out, compress_blobs=compress)
        if together:
            writer.add_small_blobs(blobs[:3])
            writer.add_small_blobs(blobs[3:])
        else:
            for object_id, content in blobs:
                writer.add_blob(object_id, content, len(content))
        writer.finish()
        return out.getvalue()

    assert pack(True) == pack(False)
    assert [r for r in read_records(pack(True)) if isinstance(r, tuple)] == blobs


@pytest.mark.parametrize("bad", [("not-an-id", b"x"), make_blob(b"y" * (SMALL_BLOB + 1))])
def test_a_bad_blob_in_a_batch_writes_none_of_it(bad):
    out = io.BytesIO()
    writer = MPackWriter(out)
    start = out.getvalue()
    with pytest.raises(ValueError):
        writer.add_small_blobs([make_blob(b"fine"), bad])
    assert out.getvalue() == start
    writer.add_blob(*make_blob(b"fine"), 4)  # the writer is still usable
    writer.finish()
