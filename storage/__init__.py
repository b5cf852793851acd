"""Blob and mpack storage backends, and URL signing.

``Store`` is the interface; ``LocalStore`` keeps objects in a sharded local
directory, ``MemoryStore`` in memory (for tests). ``UrlSigner`` signs and
verifies the download URLs that ``Store.presign_mpack_get`` hands out.
"""
from storage.base import BLOBS, MPACKS, NAMESPACES, Store
from storage.local import LocalStore
from storage.memory import MemoryStore
from storage.pending import PendingFile
from storage.signing import UrlSigner, mpack_path

__all__ = [
    "BLOBS",
    "MPACKS",
    "NAMESPACES",
    "LocalStore",
    "MemoryStore",
    "PendingFile",
    "Store",
    "UrlSigner",
    "mpack_path",
]
