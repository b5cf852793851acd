"""Applying a downloaded mpack to a clone, all or nothing.

``stage_pack`` reads the whole pack with the verifying reader, streaming each
blob into a temp file of a stage directory (memory bounded by one chunk plus
the snapshot and commit records) and keeping the records. Nothing reaches the
repository before the trailer has verified. ``StagedPack.commit_into`` then
checks that the pack together with the repository is complete (every object
a snapshot names, every snapshot and parent a commit names) and moves objects
in first, then snapshots, then commits; refs are the caller's last step, so
a repository never names a commit whose history it lacks. On any error the
stage directory is deleted and the repository is left as it was.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mpack.client.files import private_temp_file
from mpack.client.layout import MuseRepo
from mpack.client.progress import Bar, CountingReader
from mpack.format import ids
from mpack.format.errors import MuseError
from mpack.format.reader import iter_mpack
from mpack.format.writer import BlobRecord, CommitRecord, SnapshotRecord, Trailer

EMPTY_BLOB = ids.object_digest(b"")


class IncompletePack(MuseError):
    """The pack names objects, snapshots or parents that neither it nor the repository holds."""

    code = "incomplete_pack"

    def __init__(self, what: str, missing: list[str]) -> None:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        super().__init__(f"incomplete pack: {len(missing)} {what} missing from the pack and the repository: {shown}")
        self.what, self.missing = what, missing


@dataclass
class StagedPack:
    """A verified pack waiting in ``stage_dir``: blob temp files plus its records."""

    stage_dir: Path
    trailer: Trailer | None = None
    blobs: dict[str, Path] = field(default_factory=dict)  # digest -> temp file
    snapshots: dict[str, dict] = field(default_factory=dict)  # digest -> record
    commits: dict[str, dict] = field(default_factory=dict)  # digest -> record, in pack order

    def missing_references(self, repo: MuseRepo) -> IncompletePack | None:
        """The first kind of reference neither the pack nor ``repo`` can satisfy, or None."""
        named = {o for s in self.snapshots.values() for o in s["manifest"].values()}  # snapshots share most ids
        objects = sorted(o for o in named if not self._has_object(repo, o))
        if objects:
            return IncompletePack("objects", objects)
        snapshots = sorted({c["snapshot_id"] for c in self.commits.values()
                            if ids.hex_of(c["snapshot_id"]) not in self.snapshots and not repo.has_snapshot(c["snapshot_id"])})
        if snapshots:
            return IncompletePack("snapshots", snapshots)
        parents = sorted({p for c in self.commits.values() for p in _parents(c)
                          if ids.hex_of(p) not in self.commits and not repo.has_commit(p)})
        if parents:
            return IncompletePack("parent commits", parents)
        return None

    def _has_object(self, repo: MuseRepo, object_id: str) -> bool:
        digest = ids.hex_of(object_id)
        return digest == EMPTY_BLOB or digest in self.blobs or repo.has_object(object_id)

    def commit_into(self, repo: MuseRepo) -> None:
        """Check completeness, then move objects, snapshots and commits into ``repo``; drop the stage.

        Raises:
            IncompletePack: A reference is unsatisfied; nothing was moved.
        """
        try:
            problem = self.missing_references(repo)
            if problem is not None:
                raise problem
            for digest, temp in self.blobs.items():
                repo.install_object_file(digest, temp)
            if self._names_empty_blob() and not repo.has_object(EMPTY_BLOB):
                repo.write_object(EMPTY_BLOB, b"")
            for snapshot in self.snapshots.values():
                repo.write_snapshot(snapshot)
            for commit in self.commits.values():
                repo.write_commit(commit)
        finally:
            self.discard()

    def _names_empty_blob(self) -> bool:
        return any(ids.hex_of(o) == EMPTY_BLOB for s in self.snapshots.values() for o in s["manifest"].values())

    def discard(self) -> None:
        """Delete the stage directory and everything in it."""
        shutil.rmtree(self.stage_dir, ignore_errors=True)


def _parents(commit: dict) -> list[str]:
    return [p for p in (commit.get("parent_commit_id"), commit.get("parent2_commit_id")) if p]


def stage_pack(pack_file: BinaryIO, stage_dir: str | os.PathLike) -> StagedPack:
    """Verify a whole pack, staging its blobs as files under ``stage_dir`` (created here).

    Raises:
        MPackError: The pack is malformed, truncated or altered; the stage is deleted.
    """
    stage = Path(stage_dir)
    stage.mkdir(parents=True, exist_ok=True)
    staged = StagedPack(stage)
    try:
        for record in iter_mpack(pack_file):
            _stage_record(staged, record)
    except BaseException:
        staged.discard()
        raise
    return staged


def _stage_record(staged: StagedPack, record: BlobRecord | SnapshotRecord | CommitRecord | Trailer) -> None:
    if isinstance(record, BlobRecord):
        staged.blobs[ids.hex_of(record.object_id)] = _stage_blob(staged.stage_dir, record)
    elif isinstance(record, SnapshotRecord):
        staged.snapshots[ids.hex_of(record.data["snapshot_id"])] = record.data
    elif isinstance(record, CommitRecord):
        staged.commits[ids.hex_of(record.data["commit_id"])] = record.data
    else:
        staged.trailer = record


def _stage_blob(stage_dir: Path, record: BlobRecord) -> Path:
    fd, name = private_temp_file(stage_dir, "blob-")  # renamed into .muse/objects: the umask's mode
    with os.fdopen(fd, "wb") as out:
        for chunk in record.chunks:  # the reader checks the id when the chunks run out
            out.write(chunk)
    return Path(name)


def apply_pack(pack_path: str | os.PathLike, repo: MuseRepo, bar: Bar | None = None) -> StagedPack:
    """Stage and apply the pack at ``pack_path`` into ``repo``; returns the (discarded) stage for its counts.

    The stage lives in ``.muse/tmp`` so that objects move in by rename. ``bar``
    shows the bytes of the pack read and verified so far.
    """
    stage_dir = tempfile.mkdtemp(prefix="stage-", dir=repo.tmp_dir)
    try:
        with open(pack_path, "rb") as src:
            reader = CountingReader(src, os.fstat(src.fileno()).st_size, bar) if bar else src
            staged = stage_pack(reader, stage_dir)
    except BaseException:
        shutil.rmtree(stage_dir, ignore_errors=True)
        raise
    staged.commit_into(repo)
    return staged
