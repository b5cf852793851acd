"""Linux system calls that Python's ``os`` module lacks, reached through ctypes."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys


def linux_call(name: str, argtypes: list) -> ctypes._CFuncPtr | None:
    """The C library's ``name`` with ``argtypes`` (errno kept for ``ctypes.get_errno``); None off Linux or where missing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    call.argtypes = argtypes
    return call
