"""What the stores and the URL signer raise; ``mpack.http.errors`` maps each to a status."""
from __future__ import annotations

import errno

from mpack.format.errors import MuseError

_FULL = {errno.ENOSPC, errno.EDQUOT}


class InvalidUrlToken(MuseError):
    """A signed download URL that is missing, malformed, tampered or expired."""

    code = "invalid_url_token"


class StoredObjectMissing(MuseError):
    """The store holds no object under this digest in this namespace."""

    code = "stored_object_missing"

    def __init__(self, namespace: str, digest: str) -> None:
        super().__init__(f"no {namespace} object {digest} in storage")
        self.namespace, self.digest = namespace, digest


class ContentMismatch(MuseError):
    code = "id_mismatch"

    def __init__(self, what: str, claimed: str, actual_hex: str) -> None:
        super().__init__(f"{what} {claimed} does not match its content (sha256 {actual_hex})")
        self.claimed, self.actual_hex = claimed, actual_hex


class StorageError(MuseError):
    """The store could not complete an operation (disk full, I/O error)."""

    code = "storage_error"


class StorageFull(StorageError):
    """The store's filesystem has no space (or quota) left for a write."""

    code = "storage_full"


class StorageUnavailable(StorageError):
    """The store cannot be reached or answers 5xx: the same call may succeed later (HTTP 503)."""

    code = "storage_unavailable"


def from_os_error(action: str, exc: OSError) -> StorageError:
    """A local filesystem's ``exc`` while doing ``action``: ``StorageFull`` for no space or quota left."""
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    if exc.errno in _FULL:
        return StorageFull(f"{action}: disk full, the store has no space left ({name}); free space, then try again")
    return StorageError(f"{action}: {exc.strerror or exc} ({name})")
