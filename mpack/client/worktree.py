"""The work tree of a client's clone: checking out snapshots safely.

A checkout refuses any manifest path that could escape the work tree
(absolute, ``..``, into ``.muse``, or through a symlink) before it writes a
single file, writes each file through a temp file and a rename, and touches
only what changed between two snapshots.
"""
from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mpack.client.errors import LayoutError, UnsafePath
from mpack.client.files import READ_CHUNK, file_digest, private_temp_file, unlink_quietly
from mpack.format import ids, rules

MUSE_DIR = ".muse"
COPY_THREADS = 4


def safe_parts(path: object) -> tuple[str, ...]:
    """The components of a manifest path that stays inside the work tree, else UnsafePath.

    The rules are the hub's (``mpack.format.rules``): what a push accepts, a checkout writes.
    """
    problem = rules.path_problem(path)
    if problem is not None:
        raise UnsafePath(path, problem)
    return tuple(path.split("/"))


class WorkTree:
    """Work-tree operations of ``MuseRepo`` (which provides ``root``, ``has_object`` and ``object_path``)."""

    root: Path

    def checkout(self, manifest: Mapping[str, str], previous: Mapping[str, str] | None = None, *,
                 fresh: bool = False) -> None:
        """Make the work tree hold ``manifest`` (path → object id).

        With ``previous`` (the manifest checked out now), only changed files are
        written and files gone from ``manifest`` are removed. Every path is
        checked, and every object found, before the first file is touched.
        ``fresh``: the work tree is a new clone's, in a directory that is deleted
        on failure; files are created in place (exclusively: nothing there is
        replaced or followed) instead of through a temp file and a rename each.
        """
        previous = previous or {}
        changed = {path: oid for path, oid in manifest.items() if previous.get(path) != oid}
        removed = [path for path in previous if path not in manifest]
        targets = {path: self._work_path(path) for path in (*changed, *removed)}
        missing = [oid for oid in changed.values() if not self.has_object(oid)]
        if missing:
            raise LayoutError(f"cannot check out: {len(missing)} objects missing, e.g. {missing[0]}")
        for path in removed:
            unlink_quietly(targets[path])
            self._prune_dirs(targets[path].parent)
        made: set[Path] = set()
        by_folder: dict[Path, list[tuple[str, Path]]] = {}
        for path, oid in changed.items():
            target = targets[path]
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._refuse_symlinks(path, target)  # mkdir followed nothing: re-check what now exists
                made.add(target.parent)
            elif target.is_symlink():
                raise UnsafePath(path, f"{target} is a symlink")
            by_folder.setdefault(target.parent, []).append((oid, target))
        write = self._create_file if fresh else self._copy_object
        # Creating files dominates a checkout: threads overlap the file system's latency, each with
        # whole directories of its own (creations in one directory serialise on its lock).
        shares = _shares(list(by_folder.values()), COPY_THREADS)
        with ThreadPoolExecutor(max_workers=COPY_THREADS, thread_name_prefix="mpack-checkout") as pool:
            for done in [pool.submit(_write_all, write, share) for share in shares]:
                done.result()

    def modified_paths(self, checked_out: Mapping[str, str], incoming: Mapping[str, str]) -> list[str]:
        """Work-tree paths a move from ``checked_out`` to ``incoming`` would overwrite or delete unsaved.

        A path differs when its file exists and hashes neither to what is checked
        out nor to what is coming (a missing file is not a change worth keeping).
        """
        touched = {p for p in {*checked_out, *incoming} if checked_out.get(p) != incoming.get(p)}
        dirty = []
        for path in sorted(touched):
            target = self._work_path(path)
            if not target.is_file():
                continue
            digest = file_digest(target)
            known = {ids.hex_of(o) for o in (checked_out.get(path), incoming.get(path)) if o}
            if digest not in known:
                dirty.append(path)
        return dirty

    def _work_path(self, path: str) -> Path:
        target = self.root.joinpath(*safe_parts(path))
        self._refuse_symlinks(path, target)
        return target

    def _refuse_symlinks(self, path: str, target: Path) -> None:
        current = self.root
        for part in target.relative_to(self.root).parts:
            current = current / part
            if current.is_symlink():
                raise UnsafePath(path, f"{current} is a symlink")

    def _copy_object(self, object_id: str, target: Path) -> None:
        fd, tmp = private_temp_file(target.parent)
        try:
            with os.fdopen(fd, "wb") as out, open(self.object_path(object_id), "rb") as source:
                shutil.copyfileobj(source, out, READ_CHUNK)
            os.replace(tmp, target)  # replaces a file; a symlink was refused above
        except BaseException:
            unlink_quietly(Path(tmp))
            raise

    def _create_file(self, object_id: str, target: Path) -> None:
        fd = os.open(target, _CREATE, 0o666)  # the umask decides the mode
        try:
            _copy_into(fd, self.object_path(object_id))
        finally:
            os.close(fd)

    def _prune_dirs(self, folder: Path) -> None:
        while folder != self.root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _copy_into(fd: int, source: Path) -> None:
    """Copy the file ``source`` into the open file ``fd`` (in the kernel where it can)."""
    src = os.open(source, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if hasattr(os, "copy_file_range"):
            try:
                while os.copy_file_range(src, fd, READ_CHUNK << 4):
                    pass
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                os.lseek(src, 0, os.SEEK_SET)
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
        while block := os.read(src, READ_CHUNK):
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view):]
    finally:
        os.close(src)


def _write_all(write: Callable[[str, Path], None], share: list[list[tuple[str, Path]]]) -> None:
    for folder in share:
        for object_id, target in folder:
            write(object_id, target)


def _shares(folders: list[list[tuple[str, Path]]], count: int) -> list[list[list[tuple[str, Path]]]]:
    """``folders`` dealt to ``count`` workers, biggest first, each to the least loaded one."""
    shares: list[list[list[tuple[str, Path]]]] = [[] for _ in range(count)]
    loads = [0] * count
    for folder in sorted(folders, key=len, reverse=True):
        least = loads.index(min(loads))
        shares[least].append(folder)
        loads[least] += len(folder)
    return [share for share in shares if share]
