"""Small file helpers for the client: atomic writes, quiet unlinks, streamed digests."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

READ_CHUNK = 1 << 20


def atomic_write(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to a temp file next to ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
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
