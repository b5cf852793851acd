"""Small file helpers for the client: atomic writes, quiet unlinks, streamed digests, umask modes.

A clone belongs to its user, as a git or Muse CLI clone does: files and
directories get the modes the umask allows (0644 and 0755 under umask 022),
although they are written through private temp files first.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

READ_CHUNK = 1 << 20


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a new file under this process's umask (0644 under 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode of a new directory under this process's umask (0755 under 022)."""
    return 0o777 & ~_umask()


def private_temp_file(folder: Path, prefix: str = ".tmp-") -> tuple[int, str]:
    """``mkstemp`` in ``folder`` whose file will have the umask's mode once renamed into place."""
    fd, name = tempfile.mkstemp(prefix=prefix, dir=folder)
    os.fchmod(fd, file_mode())
    return fd, name


def atomic_write(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to a temp file next to ``path`` and rename it into place (mode from the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = private_temp_file(path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(Path(tmp))
        raise


def unlink_quietly(path: Path) -> None:
    """Remove ``path`` if it is there."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def file_digest(path: Path) -> str:
    """Hex sha256 of a file, read in bounded chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(READ_CHUNK):
            sha.update(block)
    return sha.hexdigest()


def _syncfs() -> ctypes._CFuncPtr | None:
    """Linux's syncfs(2), or None where it is missing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


SYNCFS = _syncfs()


def make_durable(paths: Iterable[Path]) -> None:
    """Make files already written (and renamed into place) durable, with their directories, in one pass.

    On Linux one ``syncfs`` flushes the whole file system that holds them: one
    journal commit instead of one per file (fsync of 10,000 small files costs
    seconds, syncfs tens of milliseconds). Elsewhere each file, then each
    directory, is fsynced.
    """
    paths = list(paths)
    if not paths:
        return
    if SYNCFS is not None:
        fd = os.open(paths[0].parent, os.O_RDONLY)
        try:
            if SYNCFS(fd) == 0:
                return
        finally:
            os.close(fd)
    for path in [*paths, *dict.fromkeys(p.parent for p in paths)]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
