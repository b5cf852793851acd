"""The mpack writer: packs of blobs, snapshots and commits, written as a stream.

Bytes only: no web framework, no database. The byte layout is specified in
``docs/mpack-format.md`` and spelled in ``mpack.format.layout``; this module and
``mpack.format.reader`` are its reference implementation.

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
      wrong raises an ``MPackError`` subclass (see ``mpack.format.errors``).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol

import zstandard

from mpack.format import ids
from mpack.format.layout import (
    BLOB_PROBE,
    BLOB_TAIL,
    CHUNK_SIZE,
    CODEC_RAW,
    CODEC_ZSTD,
    COUNTS,
    FLAGS,
    HEADER,
    MAGIC,
    REC_BLOB,
    REC_COMMIT,
    REC_SNAPSHOT,
    REC_TRAILER,
    RECORD_NAMES,
    SMALL_BLOB,
    U8,
    U32,
    U64_MAX,
    VERSION,
    Trailer,
    meta_bytes,
    read_full,
    snapshot_delta_record,
)


class EncodedSnapshots(Protocol):
    """Snapshot records encoded ahead of time (``mpack.format.spill.SnapshotSpill``)."""

    count: int
    first_base: str | None  # the first record's base id (None: in full)
    last_id: str | None

    def pieces(self) -> Iterator[bytes]: ...


# -- writing ------------------------------------------------------------------------

class _HashingWriter:
    """Passes writes through to a file while hashing (unless the file hashes them) and counting them."""

    def __init__(self, fileobj: BinaryIO, running_sha256: Callable[[], str] | None = None) -> None:
        self._f = fileobj
        self._sha = hashlib.sha256() if running_sha256 is None else None
        self._running = running_sha256
        self.bytes_written = 0

    def write(self, data: bytes | memoryview) -> None:
        self._f.write(data)  # a buffered file writes everything or raises
        if self._sha is not None:
            self._sha.update(data)
        self.bytes_written += len(data)

    def digest(self) -> bytes:
        return bytes.fromhex(self.hexdigest())

    def hexdigest(self) -> str:
        return self._sha.hexdigest() if self._sha is not None else self._running()


class MPackWriter:
    """Writes one pack: blobs, then snapshots, then commits, then ``finish()``.

    The header is written on construction. Ids are not re-verified here: the
    caller passes records it has verified already.

    Args:
        fileobj: A buffered binary file-like object opened for writing.
        level: zstd compression level (1-22) for snapshot and commit records,
            and for blobs unless ``compress_blobs`` is False.
        compress_blobs: Try zstd on each blob (on a probe of its first
            ``BLOB_PROBE`` bytes); False writes every blob raw.
        running_sha256: For a ``fileobj`` that hashes what it is written (a
            store's pending file): returns the hex sha256 of the bytes written
            so far, and the writer does not hash them a second time.

    Raises:
        ValueError: On misuse: records out of order, a blob whose source has
            another length than ``size``, a record msgpack cannot encode, any
            call after ``finish()``, or after an ``add_blob`` failed half-way.
        OversizedRecord: A snapshot or commit encodes to more than
            ``MAX_META_RECORD`` bytes (no reader would accept it).
    """

    def __init__(self, fileobj: BinaryIO, *, level: int = 3, compress_blobs: bool = True,
                 running_sha256: Callable[[], str] | None = None) -> None:
        if not isinstance(level, int) or not 1 <= level <= 22:
            raise ValueError(f"zstd level must be an int from 1 to 22, not {level!r}")
        self._out = _HashingWriter(fileobj, running_sha256)
        self._compress_blobs = compress_blobs
        self._zstd = zstandard.ZstdCompressor(level=level)
        self._stage = REC_BLOB
        self._counts = {REC_BLOB: 0, REC_SNAPSHOT: 0, REC_COMMIT: 0}
        self._blob_bytes = 0
        self._previous: str | None = None  # the last snapshot record's id
        self._previous_manifest: dict | None = None  # and its manifest, when add_snapshot wrote it
        self._broken = False
        self._trailer: Trailer | None = None
        self._out.write(HEADER.pack(MAGIC, VERSION, FLAGS))

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
        if not isinstance(size, int) or not 0 <= size <= U64_MAX:
            raise ValueError(f"blob size must be an int from 0 to 2**64-1, not {size!r}")
        chunks = _source_chunks(source, size)
        first = next(chunks, b"")
        codec, frame = self._blob_codec(first)
        oid = object_id.encode("ascii")
        head = U8.pack(REC_BLOB) + U8.pack(len(oid)) + oid + BLOB_TAIL.pack(size, codec)
        if codec == CODEC_RAW and size <= SMALL_BLOB:
            for _ in chunks:  # a small blob is one chunk: this only checks that the source ends here
                pass
            # One write for the whole record: most blobs are small, and each write costs a call and a hash update.
            self._out.write(b"".join((head, U32.pack(size), first, U32.pack(0)) if size else (head, U32.pack(0))))
            self._added(REC_BLOB)
            self._blob_bytes += size
            return
        self._broken = True  # a failure from here on leaves half a record behind
        self._out.write(head)
        if first:
            self._write_chunk(first, codec, frame)
        del first, frame  # hold one chunk at a time, not the first for the whole blob
        for chunk in chunks:
            self._write_chunk(chunk, codec, None)
            del chunk  # release it before the next read
        self._out.write(U32.pack(0))
        self._broken = False
        self._added(REC_BLOB)
        self._blob_bytes += size

    def add_small_blobs(self, blobs: list[tuple[str, bytes]]) -> None:
        """Append several blobs of at most ``SMALL_BLOB`` bytes each: the same bytes as ``add_blob``
        for each in turn, written in one piece (each write costs a call and a hash update).

        Args:
            blobs: (object id, content) pairs, in pack order.
        """
        self._enter(REC_BLOB)
        pieces: list[bytes] = []
        for object_id, content in blobs:
            size = len(content)
            if not ids.is_id(object_id):
                raise ValueError(f"malformed object id {object_id!r}")
            if size > SMALL_BLOB:
                raise ValueError(f"a blob of {size} bytes is not small (at most {SMALL_BLOB}): use add_blob")
            codec, frame = self._blob_codec(content)
            oid = object_id.encode("ascii")
            pieces.append(U8.pack(REC_BLOB) + U8.pack(len(oid)) + oid + BLOB_TAIL.pack(size, codec))
            if codec == CODEC_ZSTD:
                pieces += (U32.pack(len(frame)), U32.pack(size), frame, U32.pack(0))
            else:
                pieces += (U32.pack(size), content, U32.pack(0)) if size else (U32.pack(0),)
        self._out.write(b"".join(pieces))
        self._counts[REC_BLOB] += len(blobs)
        self._stage = REC_BLOB
        self._blob_bytes += sum(len(content) for _, content in blobs)

    def _blob_codec(self, first: bytes | memoryview) -> tuple[int, bytes | None]:
        """(codec, the first chunk's frame if already made) from a probe of the blob's first bytes."""
        if not first or not self._compress_blobs:
            return CODEC_RAW, None
        probe = first[:BLOB_PROBE]
        frame = self._zstd.compress(probe)
        if len(frame) * 10 > len(probe) * 9:
            return CODEC_RAW, None
        return CODEC_ZSTD, frame if len(probe) == len(first) else None

    def add_snapshot(self, snapshot: dict, *, base: tuple[str, dict] | None = None) -> None:
        """Append a snapshot record: its delta against the previous snapshot record.

        The first snapshot record of a pack is written in full, or, with
        ``base`` = (snapshot id, manifest) of a snapshot the receiver holds, as
        a delta against that. After ``add_snapshot_delta`` (whose manifest the
        writer never sees) the next ``add_snapshot`` is written in full.
        """
        if not isinstance(snapshot, dict) or not isinstance(snapshot.get("manifest"), dict):
            raise TypeError("a snapshot must be a dict with a manifest dict")
        manifest = snapshot["manifest"]
        if base is not None and self._previous is not None:
            raise ValueError("only the first snapshot record of a pack may name an outside base")
        if self._previous is not None and self._previous_manifest is not None:
            base_id, old = self._previous, self._previous_manifest
        elif base is not None:
            base_id, old = base
        else:
            base_id, old = None, {}
        changed = {path: oid for path, oid in manifest.items() if old.get(path) != oid}
        removed = [path for path in old if path not in manifest]
        fields = {key: value for key, value in snapshot.items() if key not in ("snapshot_id", "manifest")}
        self.add_snapshot_delta(snapshot.get("snapshot_id"), fields, base_id, changed, removed)
        self._previous_manifest = dict(manifest)

    def add_snapshot_delta(self, snapshot_id: str, fields: dict, base_id: str | None,
                           changed: dict, removed: list) -> None:
        """Append a snapshot record from its delta, as a hub keeps it (the writer trusts it).

        Args:
            snapshot_id: The snapshot's id, as spelled.
            fields: Every key of the snapshot but ``snapshot_id`` and ``manifest``.
            base_id: None for a full record (``changed`` is then the whole
                manifest); otherwise the previous snapshot record's id, or for
                the first record the id of a snapshot the receiver holds.
            changed: Entries added or changed against the base (path -> id).
            removed: Paths of the base that this snapshot drops.
        """
        self._enter(REC_SNAPSHOT)
        record = snapshot_delta_record(snapshot_id, fields, base_id, changed, removed, self._previous)
        self._add_meta(REC_SNAPSHOT, record)
        self._previous, self._previous_manifest = snapshot_id, None

    def add_spilled_snapshots(self, spill: EncodedSnapshots) -> None:
        """Append the snapshot records a ``SnapshotSpill`` encoded ahead of time, byte for byte.

        The same records given to ``add_snapshot_delta`` in the same order give
        the same bytes: a build encodes them while it plans the pack, before the
        blobs that precede them are written, without holding them in memory.
        """
        self._enter(REC_SNAPSHOT)
        if spill.count == 0:
            return
        if spill.first_base is not None and self._previous is not None \
                and spill.first_base[-64:] != self._previous[-64:]:
            raise ValueError(f"spilled snapshots start against {spill.first_base}, not the previous record")
        for piece in spill.pieces():
            self._out.write(piece)
        self._stage = REC_SNAPSHOT
        self._counts[REC_SNAPSHOT] += spill.count
        self._previous, self._previous_manifest = spill.last_id, None

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
        self._out.write(U8.pack(REC_TRAILER) + COUNTS.pack(*counts, self._blob_bytes))
        checksum = self._out.digest()
        self._out.write(checksum)
        self._trailer = Trailer(*counts, self._blob_bytes, checksum.hex(), self._out.hexdigest())
        return self._trailer

    def _enter(self, kind: int) -> None:
        if self._trailer is not None:
            raise ValueError("the pack is finished; nothing can be added")
        if self._broken:
            raise ValueError("the writer is unusable: an earlier add_blob failed half-way")
        if kind < self._stage:
            raise ValueError(
                f"cannot add a {RECORD_NAMES[kind]} after a {RECORD_NAMES[self._stage]}: "
                "a pack holds blobs, then snapshots, then commits"
            )

    def _added(self, kind: int) -> None:
        self._stage = kind
        self._counts[kind] += 1

    def _write_chunk(self, chunk: bytes | memoryview, codec: int, frame: bytes | None) -> None:
        if codec == CODEC_RAW:
            self._out.write(U32.pack(len(chunk)))
            self._out.write(chunk)
            return
        frame = self._zstd.compress(chunk) if frame is None else frame
        self._out.write(U32.pack(len(frame)) + U32.pack(len(chunk)))
        self._out.write(frame)

    def _add_meta(self, kind: int, record: dict) -> None:
        self._enter(kind)
        self._out.write(meta_bytes(kind, record, self._zstd))
        self._added(kind)


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
        chunk = read_full(source, want)
        if len(chunk) < want:
            raise ValueError(f"blob source ended after {done + len(chunk)} bytes, size says {size}")
        done += want
        yield chunk
    if source.read(1):
        raise ValueError(f"blob source holds more than {size} bytes")


