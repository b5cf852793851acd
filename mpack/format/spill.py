"""Snapshot records encoded before the blobs they follow, kept out of memory (issue 8: a build's memory flat).

A pack holds blobs, then snapshots, then commits, but a build learns which
blobs to write from the snapshot deltas. ``SnapshotSpill`` lets it read the
deltas once, in pack order: each record is encoded as the writer would
(``writer.meta_bytes``) into a temp file that stays in memory while small, and
``MPackWriter.add_spilled_snapshots`` copies the bytes after the blobs. The
pack is byte-identical to one written with ``add_snapshot_delta``.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator

import zstandard

from mpack.format.layout import CHUNK_SIZE, REC_SNAPSHOT, meta_bytes, snapshot_delta_record

IN_MEMORY = 1 << 20  # a spill this small never touches the disk


class SnapshotSpill:
    """Encoded snapshot records in pack order (see the module docstring); a context manager.

    Args:
        level: the zstd level of the writer the records go to (the same bytes need the same level).
        directory: where a spill too large for memory goes (None: the system's temp directory).
    """

    def __init__(self, level: int = 3, directory: str | None = None) -> None:
        self._zstd = zstandard.ZstdCompressor(level=level)
        self._file = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY, dir=directory)  # noqa: SIM115 — closed by close()
        self.count = 0
        self.first_base: str | None = None  # the first record's base id (None: in full)
        self.last_id: str | None = None

    def add_delta(self, snapshot_id: str, fields: dict, base_id: str | None, changed: dict, removed: list) -> None:
        """As ``MPackWriter.add_snapshot_delta``, into the spill."""
        record = snapshot_delta_record(snapshot_id, fields, base_id, changed, removed, self.last_id)
        self._file.write(meta_bytes(REC_SNAPSHOT, record, self._zstd))
        if self.count == 0:
            self.first_base = base_id
        self.count += 1
        self.last_id = snapshot_id

    def pieces(self) -> Iterator[bytes]:
        """The encoded records, in pieces of at most ``CHUNK_SIZE`` bytes."""
        self._file.seek(0)
        while piece := self._file.read(CHUNK_SIZE):
            yield piece

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SnapshotSpill:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
