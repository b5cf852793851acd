"""Linux's ``syncfs(2)``: flush one whole filesystem (data, inodes, directories) in one call.

``put_many`` makes a chunk of objects durable with two of these instead of
one fsync per file and per directory (``storage/local_batch.py``). syncfs
reports write-back errors since Linux 5.8; it waits for every dirty page of
the filesystem, not only the caller's (docs/decisions.md). Elsewhere
``AVAILABLE`` is False and callers fsync file by file.
"""
from __future__ import annotations

import ctypes
import os

from storage.libc import linux_call

_CALL = linux_call("syncfs", [ctypes.c_int])
AVAILABLE = _CALL is not None


def syncfs(path: str) -> None:
    """Flush the filesystem that holds ``path`` (a file or directory); OSError when it fails."""
    if _CALL is None:
        raise OSError(38, "syncfs is not available here")  # ENOSYS
    fd = os.open(path, os.O_RDONLY)
    try:
        if _CALL(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
