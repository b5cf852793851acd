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
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mpack.client.files import make_durable
from mpack.client.layout import MuseRepo, record_json
from mpack.client.progress import Bar, CountingReader
from mpack.client.snapshot_json import SnapshotJson
from mpack.format import ids
from mpack.format.errors import IdMismatch, MuseError
from mpack.format.layout import BlobRecord, CommitRecord, SnapshotRecord, Trailer
from mpack.format.reader import BaseResolver, iter_mpack

EMPTY_BLOB = ids.object_digest(b"")
WRITER_THREADS = 4
MAX_QUEUED_BYTES = 16 << 20  # staged bytes handed to the writer threads and not yet written (about)
BATCH_BYTES = 1 << 20  # a batch of stage files goes to one writer thread at a time
BATCH_FILES = 64


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

    def commit_into(self, repo: MuseRepo, pending: list[Path] | None = None) -> None:
        """Check completeness, move objects, snapshots and commits into ``repo``, make them durable; drop the stage.

        With ``pending``, the files moved in are added to it instead of made durable
        here: the caller makes them durable (``files.make_durable``) before it moves
        any ref (a clone does it while it writes the work tree).

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
            written = [path for path in written if path is not None]
            if pending is None:
                make_durable(written)
            else:
                pending += written
        finally:
            self.discard()

    def stage_name(self, kind: str) -> str:
        """A fresh file name in the stage (one per record: a pack may repeat an id)."""
        return f"{kind}-{next(self._names)}"

    def discard(self) -> None:
        """Delete the stage directory and everything in it."""
        shutil.rmtree(self.stage_dir, ignore_errors=True)


class StageWriter:
    """Writes stage files on a few threads: creating one file per object and record is most of an
    apply's cost, and threads overlap it with the reader's parsing and hashing (the GIL is released
    in the system calls).

    Files go to the threads in batches (``BATCH_BYTES`` or ``BATCH_FILES``, whichever comes
    first), round robin, through bounded queues: one hand-over per batch, not per file, and at
    most ``MAX_QUEUED_BYTES`` (about) waiting in memory. Each thread creates its files in a
    directory of its own under ``stage_dir``: creations in one directory serialise on its lock
    (threads sharing one spent their time spinning on it). Each file is created with ``os.open``
    (``O_EXCL``: nothing there is replaced or followed), written and closed: three system calls.
    The first failure is raised by ``write`` or ``finish``.
    """

    def __init__(self, stage_dir: str | os.PathLike, threads: int = WRITER_THREADS) -> None:
        self._dirs = [os.path.join(stage_dir, f"w{n}") for n in range(threads)]
        for folder in self._dirs:
            os.mkdir(folder)
        slots = max(1, MAX_QUEUED_BYTES // BATCH_BYTES // threads - 1)
        self._queues: list[queue.Queue[list[tuple[str, bytes]] | None]] = [queue.Queue(slots) for _ in range(threads)]
        self._next = 0  # the thread the batch being filled goes to
        self._batch: list[tuple[str, bytes]] = []
        self._batch_bytes = 0
        self._errors: list[BaseException] = []
        self._stopping = False
        self._threads = [threading.Thread(target=self._run, args=(q,), name=f"mpack-stage-{n}", daemon=True)
                         for n, q in enumerate(self._queues)]
        for thread in self._threads:
            thread.start()

    def write(self, name: str, data: bytes) -> str:
        """Queue ``data`` for a new stage file called ``name`` (unique in the stage); returns its path."""
        path = os.path.join(self._dirs[self._next], name)
        self._batch.append((path, data))
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_FILES:
            self._hand_over()
        return path

    def own_path(self, name: str) -> str:
        """A path for a stage file the caller writes itself."""
        return os.path.join(self._dirs[0], name)

    def _hand_over(self) -> None:
        if self._errors:
            raise self._errors[0]
        if self._batch:
            self._queues[self._next].put(self._batch)
            self._batch, self._batch_bytes = [], 0
            self._next = (self._next + 1) % len(self._queues)

    def _run(self, batches: queue.Queue) -> None:
        while (batch := batches.get()) is not None:
            if self._errors or self._stopping:
                continue  # keep draining so that the producer never blocks; write nothing more
            try:
                for path, data in batch:
                    _write_file(path, data)
            except BaseException as exc:  # noqa: BLE001 — handed to the producer
                self._errors.append(exc)

    def finish(self) -> None:
        """Wait for every write; raises the first failure."""
        try:
            self._hand_over()
        except BaseException:
            self.close()
            raise
        self._stop()
        if self._errors:
            raise self._errors[0]

    def close(self) -> None:
        """Stop without writing what is still queued, letting writes under way end (the caller may then delete the stage)."""
        self._stopping = True
        self._stop()

    def _stop(self) -> None:
        for batches in self._queues:
            batches.put(None)
        for thread in self._threads:
            thread.join()
        self._threads, self._queues = [], []


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, _CREATE, 0o666)  # the umask decides the mode: the file is renamed into the clone
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


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
    staged = StagedPack(stage, files=StageWriter(stage))
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
        staged.blobs[digest] = _stage_blob(staged, staged.stage_name("b"), record)
    elif isinstance(record, SnapshotRecord):
        snapshot_id = record.data["snapshot_id"]
        digest = ids.hex_of(snapshot_id)
        for object_id in record.changed.values():  # the entries new to a receiver holding the base
            staged.objects_named.setdefault(object_id[-64:], object_id)
        staged.snapshots[digest] = (snapshot_id, staged.files.write(
            staged.stage_name("s"), staged.snapshot_json.render(record)))
    elif isinstance(record, CommitRecord):
        data = record.data
        digest = ids.hex_of(data["commit_id"])
        parents = [p for p in (data.get("parent_commit_id"), data.get("parent2_commit_id")) if p]
        path = staged.files.write(staged.stage_name("c"), record_json("commits", data))
        staged.commits[digest] = StagedCommit(data["commit_id"], data["snapshot_id"], parents, path)
    else:
        staged.trailer = record


def _stage_blob(staged: StagedPack, name: str, record: BlobRecord) -> str:
    # Stage files are created with the umask's mode (open, not mkstemp): they are renamed into the clone.
    if record.size <= MAX_QUEUED_BYTES // 8:  # small: read it whole (one chunk or two), write it on a thread
        return staged.files.write(name, b"".join(record.chunks))  # the reader checks the id as the chunks run out
    path = staged.files.own_path(name)
    with open(path, "xb") as out:
        for chunk in record.chunks:
            out.write(chunk)
    return path


def apply_pack(pack_path: str | os.PathLike, repo: MuseRepo, bar: Bar | None = None, *,
               expected_id: str | None = None) -> StagedPack:
    """Stage and apply the pack file at ``pack_path`` into ``repo`` (``apply_stream`` over the file)."""
    with open(pack_path, "rb") as src:
        return apply_stream(src, repo, bar, total=os.fstat(src.fileno()).st_size, expected_id=expected_id)


def apply_stream(source: BinaryIO, repo: MuseRepo, bar: Bar | None = None, *, total: int | None = None,
                 expected_id: str | None = None, pending: list[Path] | None = None) -> StagedPack:
    """Stage the pack read from ``source`` (a file, or a download as it arrives), then apply it to ``repo``.

    Returns the (discarded) stage for its counts. The stage lives in ``.muse/tmp`` so
    that objects and records move in by rename; nothing moves before the whole pack
    has been read and verified. ``bar`` shows the bytes read and verified so far, of ``total``.
    ``pending``: as in ``StagedPack.commit_into``.

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
    staged.commit_into(repo, pending)
    return staged
