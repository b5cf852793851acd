"""Applying an mpack to a clone as it downloads, all or nothing.

``stage_pack`` reads the whole pack (a file, or the download itself as it
arrives: ``apply_stream``) with the verifying reader and spills
everything to a stage directory: each blob streams into a temp file, each
snapshot and commit record is written there already as the JSON file the
Muse layout holds. Memory holds one manifest (the reader's) and the ids of
what was staged, never the records. Nothing reaches the repository before the
trailer has verified. ``StagedPack.commit_into`` then checks that the pack
together with the repository is complete (every object a snapshot adds,
every snapshot and parent a commit names), renames objects, then snapshots,
then commits into place, and makes all of it durable in one pass
(``files.make_durable``); refs are the caller's last step, so a repository
never names a commit whose history it lacks. On any error the stage
directory is deleted and the repository is left as it was.
"""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mpack.client.files import make_durable
from mpack.client.layout import MuseRepo, record_json
from mpack.client.progress import Bar, CountingReader
from mpack.client.snapshot_json import SnapshotJson
from mpack.format import ids
from mpack.format.errors import IdMismatch, MuseError
from mpack.format.reader import BaseResolver, iter_mpack
from mpack.format.writer import BlobRecord, CommitRecord, SnapshotRecord, Trailer

EMPTY_BLOB = ids.object_digest(b"")
WRITER_THREADS = 4
MAX_QUEUED_BYTES = 16 << 20  # staged bytes handed to the writer threads and not yet written


class IncompletePack(MuseError):
    """The pack names objects, snapshots or parents that neither it nor the repository holds."""

    code = "incomplete_pack"

    def __init__(self, what: str, missing: list[str]) -> None:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        super().__init__(f"incomplete pack: {len(missing)} {what} missing from the pack and the repository: {shown}")
        self.what, self.missing = what, missing


@dataclass
class StagedCommit:
    commit_id: str
    snapshot_id: str
    parents: list[str]
    path: str


@dataclass
class StagedPack:
    """A verified pack waiting in ``stage_dir``: blob files and record files, by digest."""

    stage_dir: Path
    trailer: Trailer | None = None
    # Stage files as str, not Path: a 4x clone stages ~36,000 of them.
    blobs: dict[str, str] = field(default_factory=dict)  # digest -> temp file
    snapshots: dict[str, tuple[str, str]] = field(default_factory=dict)  # digest -> (id, JSON file)
    commits: dict[str, StagedCommit] = field(default_factory=dict)  # digest -> staged commit, in pack order
    objects_named: dict[str, str] = field(default_factory=dict)  # digest -> id, of entries the snapshots add
    files: StageWriter | None = field(default=None, repr=False)
    _names: Iterator[int] = field(default_factory=itertools.count, repr=False)
    snapshot_json: SnapshotJson = field(default_factory=SnapshotJson, repr=False)

    def missing_references(self, repo: MuseRepo) -> IncompletePack | None:
        """The first kind of reference neither the pack nor ``repo`` can satisfy, or None."""
        objects = sorted(o for d, o in self.objects_named.items()
                         if d != EMPTY_BLOB and d not in self.blobs and not repo.has_object(o))
        if objects:
            return IncompletePack("objects", objects)
        snapshots = sorted({c.snapshot_id for c in self.commits.values()
                            if ids.hex_of(c.snapshot_id) not in self.snapshots and not repo.has_snapshot(c.snapshot_id)})
        if snapshots:
            return IncompletePack("snapshots", snapshots)
        parents = sorted({p for c in self.commits.values() for p in c.parents
                          if ids.hex_of(p) not in self.commits and not repo.has_commit(p)})
        if parents:
            return IncompletePack("parent commits", parents)
        return None

    def commit_into(self, repo: MuseRepo) -> None:
        """Check completeness, move objects, snapshots and commits into ``repo``, make them durable; drop the stage.

        Raises:
            IncompletePack: A reference is unsatisfied; nothing was moved.
        """
        try:
            problem = self.missing_references(repo)
            if problem is not None:
                raise problem
            written = [repo.install_object_file(digest, temp) for digest, temp in self.blobs.items()]
            if EMPTY_BLOB in self.objects_named and not repo.has_object(EMPTY_BLOB):
                repo.write_object(EMPTY_BLOB, b"")
                written.append(repo.object_path(EMPTY_BLOB))
            written += [repo.install_record_file("snapshots", sid, path) for sid, path in self.snapshots.values()]
            written += [repo.install_record_file("commits", c.commit_id, c.path) for c in self.commits.values()]
            make_durable([path for path in written if path is not None])
        finally:
            self.discard()

    def stage_path(self, kind: str) -> str:
        """A fresh file name in the stage (one per record: a pack may repeat an id)."""
        return os.path.join(self.stage_dir, f"{kind}-{next(self._names)}")

    def discard(self) -> None:
        """Delete the stage directory and everything in it."""
        shutil.rmtree(self.stage_dir, ignore_errors=True)


class StageWriter:
    """Writes stage files on a few threads: creating one file per object and record is most of an
    apply's cost, and threads overlap the file system's latency (the GIL is released in I/O).

    At most ``MAX_QUEUED_BYTES`` wait in memory; the first failure is raised by
    ``write`` or ``finish``.
    """

    def __init__(self, threads: int = WRITER_THREADS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mpack-stage")
        self._queued: deque[tuple[Future, int]] = deque()
        self._bytes = 0

    def write(self, path: str, data: bytes) -> str:
        self._queued.append((self._pool.submit(_write_file, path, data), len(data)))
        self._bytes += len(data)
        while self._bytes > MAX_QUEUED_BYTES or len(self._queued) > 1024:
            self._settle_one()
        return path

    def _settle_one(self) -> None:
        future, size = self._queued.popleft()
        self._bytes -= size
        future.result()

    def finish(self) -> None:
        """Wait for every write; raises the first failure."""
        try:
            while self._queued:
                self._settle_one()
        finally:
            self.close()

    def close(self) -> None:
        """Stop, letting writes under way end (the caller may then delete the stage)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)


def stage_pack(pack_file: BinaryIO, stage_dir: str | os.PathLike,
               snapshot_base: BaseResolver | None = None) -> StagedPack:
    """Verify a whole pack, staging its blobs and records as files under ``stage_dir`` (created here).

    Args:
        snapshot_base: The receiver's snapshots, for a pack whose first snapshot is a delta.

    Raises:
        MPackError: The pack is malformed, truncated or altered; the stage is deleted.
    """
    stage = Path(stage_dir)
    stage.mkdir(parents=True, exist_ok=True)
    staged = StagedPack(stage, files=StageWriter())
    try:
        for record in iter_mpack(pack_file, snapshot_base=snapshot_base):
            _stage_record(staged, record)
        staged.files.finish()
    except BaseException:
        staged.files.close()
        staged.discard()
        raise
    return staged


def _stage_record(staged: StagedPack, record: BlobRecord | SnapshotRecord | CommitRecord | Trailer) -> None:
    if isinstance(record, BlobRecord):
        digest = ids.hex_of(record.object_id)
        staged.blobs[digest] = _stage_blob(staged, staged.stage_path("b"), record)
    elif isinstance(record, SnapshotRecord):
        snapshot_id = record.data["snapshot_id"]
        digest = ids.hex_of(snapshot_id)
        for object_id in record.changed.values():  # the entries new to a receiver holding the base
            staged.objects_named.setdefault(object_id[-64:], object_id)
        staged.snapshots[digest] = (snapshot_id, staged.files.write(
            staged.stage_path("s"), staged.snapshot_json.render(record)))
    elif isinstance(record, CommitRecord):
        data = record.data
        digest = ids.hex_of(data["commit_id"])
        parents = [p for p in (data.get("parent_commit_id"), data.get("parent2_commit_id")) if p]
        path = staged.files.write(staged.stage_path("c"), record_json("commits", data))
        staged.commits[digest] = StagedCommit(data["commit_id"], data["snapshot_id"], parents, path)
    else:
        staged.trailer = record


def _stage_blob(staged: StagedPack, path: str, record: BlobRecord) -> str:
    # Stage files are created with the umask's mode (open, not mkstemp): they are renamed into the clone.
    if record.size <= MAX_QUEUED_BYTES // 8:  # small: read it whole (one chunk or two), write it on a thread
        return staged.files.write(path, b"".join(record.chunks))  # the reader checks the id as the chunks run out
    with open(path, "wb") as out:
        for chunk in record.chunks:
            out.write(chunk)
    return path


def apply_pack(pack_path: str | os.PathLike, repo: MuseRepo, bar: Bar | None = None, *,
               expected_id: str | None = None) -> StagedPack:
    """Stage and apply the pack file at ``pack_path`` into ``repo`` (``apply_stream`` over the file)."""
    with open(pack_path, "rb") as src:
        return apply_stream(src, repo, bar, total=os.fstat(src.fileno()).st_size, expected_id=expected_id)


def apply_stream(source: BinaryIO, repo: MuseRepo, bar: Bar | None = None, *, total: int | None = None,
                 expected_id: str | None = None) -> StagedPack:
    """Stage the pack read from ``source`` (a file, or a download as it arrives), then apply it to ``repo``.

    Returns the (discarded) stage for its counts. The stage lives in ``.muse/tmp`` so
    that objects and records move in by rename; nothing moves before the whole pack
    has been read and verified. ``bar`` shows the bytes read and verified so far, of ``total``.

    Raises:
        IdMismatch: ``expected_id`` is given and the pack's sha256 differs (nothing applied).
    """
    stage_dir = tempfile.mkdtemp(prefix="stage-", dir=repo.tmp_dir)
    try:
        reader = CountingReader(source, total, bar) if bar else source
        staged = stage_pack(reader, stage_dir, repo.snapshot_manifest)
        if expected_id is not None and staged.trailer.mpack_hex != ids.hex_of(expected_id):
            raise IdMismatch("mpack", expected_id, staged.trailer.mpack_hex)
    except BaseException:
        shutil.rmtree(stage_dir, ignore_errors=True)
        raise
    staged.commit_into(repo)
    return staged
