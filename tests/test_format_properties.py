"""Properties of the mpack format: no damaged pack verifies, every valid one round-trips."""
from __future__ import annotations

import io
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpack.format import ids, rules
from mpack.format.errors import MPackError, Truncated
from mpack.format.layout import CHUNK_SIZE, CommitRecord, SnapshotRecord
from mpack.format.order import canonical_order_commits
from mpack.format.reader import iter_mpack
from tests.test_format import (
    build_mpack,
    evolving_snapshots,
    make_blob,
    make_commit,
    make_history,
    make_snapshot,
    read_records,
    verify,
)

# A small pack with every record kind, a zstd blob, a raw blob, an empty blob and a merge.
BLOBS, SNAPSHOTS, COMMITS = make_history()
BLOBS = [*BLOBS, make_blob(b""), make_blob(bytes(range(200)) * 2)]
PACK = build_mpack(BLOBS, SNAPSHOTS, COMMITS)
HEADER = PACK[:7]
# Version 2's snapshot deltas: a zstd-compressed first record, then adds, changes, removals and renames.
_BIG = {f"src/m{n:03}.py": BLOBS[n % len(BLOBS)][0] for n in range(40)}
DELTA_SNAPSHOTS = [make_snapshot(_BIG), *evolving_snapshots(), make_snapshot({**_BIG, "x": BLOBS[0][0]})]
DELTA_PACK = build_mpack(BLOBS[:1], DELTA_SNAPSHOTS, [make_commit(DELTA_SNAPSHOTS[-1])])

FAST = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- damage never verifies -----------------------------------------------------------

def test_every_prefix_of_a_valid_pack_is_truncated():
    for pack in (PACK, DELTA_PACK):
        for cut in range(len(pack)):
            with pytest.raises(Truncated):
                verify(pack[:cut])


def test_the_delta_pack_holds_compressed_and_delta_records():
    assert verify(DELTA_PACK).snapshot_count == len(DELTA_SNAPSHOTS)
    assert DELTA_PACK.count(b"src/m001.py") == 1  # in one raw removal list; both whole manifests are zstd frames


def test_every_single_bit_flip_of_the_delta_pack_does_not_verify():
    for position in range(len(DELTA_PACK)):
        for bit in (0x01, 0x80):
            damaged = bytearray(DELTA_PACK)
            damaged[position] ^= bit
            with pytest.raises(MPackError):
                verify(bytes(damaged))


@FAST
@given(position=st.integers(0, len(DELTA_PACK) - 1), mask=st.integers(1, 255))
def test_a_delta_pack_with_one_byte_changed_does_not_verify(position, mask):
    damaged = bytearray(DELTA_PACK)
    damaged[position] ^= mask
    with pytest.raises(MPackError):
        verify(bytes(damaged))


@FAST
@given(cut=st.integers(0, len(DELTA_PACK) - 1), extra=st.binary(max_size=64))
def test_a_cut_and_patched_delta_pack_does_not_verify(cut, extra):
    with pytest.raises(MPackError):
        verify(DELTA_PACK[:cut] + extra)


@FAST
@given(cut=st.integers(0, len(PACK) - 1))
def test_a_truncated_pack_does_not_verify(cut):
    with pytest.raises(MPackError):
        verify(PACK[:cut])


@FAST
@given(position=st.integers(0, len(PACK) - 1), mask=st.integers(1, 255))
def test_a_pack_with_one_byte_changed_does_not_verify(position, mask):
    damaged = bytearray(PACK)
    damaged[position] ^= mask
    with pytest.raises(MPackError):
        verify(bytes(damaged))


@FAST
@given(position=st.integers(0, len(PACK)), extra=st.binary(min_size=1, max_size=64))
def test_a_pack_with_bytes_inserted_does_not_verify(position, extra):
    with pytest.raises(MPackError):
        verify(PACK[:position] + extra + PACK[position:])


@FAST
@given(data=st.binary(max_size=4096))
def test_random_bytes_do_not_verify(data):
    with pytest.raises(MPackError):
        verify(data)


@FAST
@given(data=st.binary(max_size=4096))
def test_random_bytes_after_a_valid_header_do_not_verify(data):
    with pytest.raises(MPackError):
        verify(HEADER + data)


@FAST
@given(kind=st.sampled_from([1, 2, 3, 0xFF]), data=st.binary(max_size=512))
def test_a_record_type_followed_by_random_bytes_does_not_verify(kind, data):
    with pytest.raises(MPackError):
        verify(HEADER + bytes([kind]) + data)


# -- random record sets round-trip ---------------------------------------------------

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=12) | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
SAFE_PATHS = st.text(min_size=1, max_size=20).filter(lambda path: rules.path_problem(path) is None)
RESERVED = {"commit_id", "snapshot_id", "message", "committed_at", "parent_commit_id", "parent2_commit_id",
            "snapshot", "parents"}  # the last two are make_commit's own parameter names
EXTRA = st.dictionaries(st.text(max_size=10).filter(lambda key: key not in RESERVED), JSONISH, max_size=3)


@st.composite
def record_sets(draw):
    blobs = [make_blob(content, prefixed=draw(st.booleans()))
             for content in draw(st.lists(st.binary(max_size=3000), max_size=4))]
    blob_ids = [object_id for object_id, _ in blobs] or [ids.object_digest(b"elsewhere")]
    snapshots = [make_snapshot(draw(st.dictionaries(SAFE_PATHS, st.sampled_from(blob_ids),
                                                    max_size=4)), created_at=draw(st.text(max_size=30)))
                 for _ in range(draw(st.integers(1, 3)))]
    commits = []
    for _ in range(draw(st.integers(0, 6))):
        parents = draw(st.lists(st.sampled_from(commits), max_size=2, unique_by=lambda c: c["commit_id"])
                       if commits else st.just([]))
        commit = make_commit(draw(st.sampled_from(snapshots)), tuple(parents), message=draw(st.text()),
                             committed_at=draw(st.text(max_size=30)), **draw(EXTRA))
        if all(commit["commit_id"] != other["commit_id"] for other in commits):
            commits.append(commit)
    return blobs, snapshots, commits


@SLOW
@given(records=record_sets(), level=st.sampled_from([1, 3, 19]))
def test_random_record_sets_round_trip(records, level):
    blobs, snapshots, commits = records
    ordered = canonical_order_commits(commits)
    items = read_records(build_mpack(blobs, snapshots, ordered, level=level))
    assert items[:-1] == [*blobs, *map(SnapshotRecord, snapshots), *map(CommitRecord, ordered)]


@SLOW
@given(records=record_sets())
def test_the_same_record_set_gives_the_same_bytes(records):
    assert build_mpack(*records) == build_mpack(*records)


@SLOW
@given(records=record_sets(), data=st.data())
def test_canonical_order_ignores_input_order(records, data):
    commits = records[2]
    ordered = canonical_order_commits(commits)
    assert canonical_order_commits(data.draw(st.permutations(commits))) == ordered
    seen = set()
    for commit in ordered:
        assert {commit["parent_commit_id"], commit["parent2_commit_id"]} - {None} <= seen
        seen.add(commit["commit_id"])


@settings(max_examples=10, deadline=None)
@given(size=st.integers(CHUNK_SIZE - 2, CHUNK_SIZE + 2), compressible=st.booleans())
def test_blobs_around_the_chunk_size_round_trip(size, compressible):
    blob = make_blob(bytes(size) if compressible else random.Random(size).randbytes(size))
    record = next(iter_mpack(io.BytesIO(build_mpack([blob]))))
    assert b"".join(record.chunks) == blob[1]
