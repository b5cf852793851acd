"""The storage interface: content-addressed blobs and mpacks.

A store keeps immutable objects in two namespaces, ``BLOBS`` and ``MPACKS``,
each object named by the SHA-256 hex digest of its bytes. Every backend
promises:

    * Ids are validated (64 lowercase hex, or ``sha256:`` + 64 hex) before
      they are used as keys or paths; a bad id raises ``InvalidId``, an
      unknown namespace ``ValueError``.
    * Every write re-hashes the bytes: an object is only ever stored under the
      digest of its content (``ContentMismatch`` otherwise).
    * Writes are atomic: a reader sees a whole object or none, never a
      partial one; a write that fails or is abandoned leaves no object and
      no temp file behind (a crash may leave a temp file, which ``iter_temp``
      and ``remove_temp`` let GC sweep).
    * Writers of the same digest may race: all succeed and one object results.
    * An object opened before it is deleted stays readable to the end.
    * A damaged object is repaired by writing it again: a write whose digest
      is already stored verifies the stored bytes and replaces them if they
      no longer hash to their name. ``verify`` checks one object;
      ``quarantine`` moves a damaged one aside (fsck).

``Store`` implements the shared parts (``put_bytes`` over ``new_file``,
``size``, ``presign_mpack_get``); backends implement the primitives.
"""
from __future__ import annotations

import abc
import contextlib
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO

from mpack.format.ids import hex_of
from storage.errors import ContentMismatch, StoredObjectMissing
from storage.pending import PendingFile
from storage.signing import UrlSigner, mpack_path

BLOBS = "blobs"
MPACKS = "mpacks"
NAMESPACES = (BLOBS, MPACKS)
VERIFY_CHUNK = 1 << 20

_TEMP_NAME = re.compile(r"[0-9a-f]{32}\.tmp")


def check_namespace(namespace: object) -> str:
    """Return ``namespace`` if it is ``BLOBS`` or ``MPACKS``, else raise ValueError."""
    if namespace not in NAMESPACES:
        raise ValueError(f"unknown storage namespace {namespace!r}")
    return namespace  # type: ignore[return-value]


def check_digest(digest: object) -> str:
    """The 64-hex key of ``digest`` (either id spelling); InvalidId if malformed."""
    return hex_of(digest)  # type: ignore[arg-type]


def verify_all(items: Sequence[tuple[str, bytes]]) -> list[str]:
    """The hex key of every ``(digest, data)``, each checked against the SHA-256 of its bytes (hashed once).

    Raises:
        InvalidId: a malformed digest.
        ContentMismatch: the first item whose bytes do not hash to its digest.
    """
    keys = []
    for digest, data in items:
        key = check_digest(digest)
        actual = hashlib.sha256(data).hexdigest()
        if actual != key:
            raise ContentMismatch("object", digest, actual)
        keys.append(key)
    return keys


def new_temp_name() -> str:
    """A fresh, unguessable temp file name."""
    return secrets.token_hex(16) + ".tmp"


def is_temp_name(name: object) -> bool:
    """True if ``name`` is a temp file name this package makes."""
    return isinstance(name, str) and _TEMP_NAME.fullmatch(name) is not None


def check_temp_name(name: object) -> str:
    """Return ``name`` if it is a temp file name this package makes, else raise ValueError."""
    if not is_temp_name(name):
        raise ValueError(f"not a storage temp file name: {name!r}")
    return name  # type: ignore[return-value]


class RecentlyFound:
    """Keys a store found lately, trusted for ``seconds`` (``Store.still_exists``); at most ``size`` kept.

    Only positive answers are kept, so only objects that exist fill it; it is
    cleared whole when full. A store forgets what it deletes or moves aside.
    """

    def __init__(self, seconds: float, size: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.size, self._clock = seconds, size, clock
        self._found: dict[str, float] = {}

    def __contains__(self, key: str) -> bool:
        found = self._found.get(key)
        return found is not None and self._clock() - found < self.seconds

    def ask(self, key: str, look: Callable[[], bool]) -> bool:
        """True if ``key`` was found lately, else what ``look()`` answers (remembered when positive)."""
        if key in self:
            return True
        found = look()
        if found:
            self.add(key)
        return found

    def add(self, key: str) -> None:
        if len(self._found) >= self.size:
            self._found.clear()
        self._found[key] = self._clock()

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._found.pop(key, None)


class Store(abc.ABC):
    """A content-addressed store of blobs and mpacks (see the module docstring)."""

    accepts_presigned_uploads = False  # True: presign_put/adopt_upload work (the S3 store)
    signs_own_urls = False  # True: presign_mpack_get returns the backend's URL, not the hub's route
    # Objects a build may have opened at once: a bucket's GET waits a network round trip, so a build
    # overlaps several; a local file opens in microseconds and is read ahead by the kernel instead.
    concurrent_opens = 1

    def __init__(self, signer: UrlSigner) -> None:
        self.signer = signer

    def put_bytes(self, namespace: str, digest: str, data: bytes) -> bool:
        """Store ``data`` under ``digest`` after checking that it hashes to it.

        Returns:
            True if the object was written, False if it already existed (then
            nothing is written).

        Raises:
            ValueError: unknown namespace.
            InvalidId: ``digest`` is malformed.
            ContentMismatch: ``data`` does not hash to ``digest``.
            StorageError: the backend could not write.
        """
        key = check_digest(digest)
        if self.exists(namespace, key):
            actual = hashlib.sha256(data).hexdigest()
            if actual != key:
                raise ContentMismatch("object", digest, actual)
            if self.intact(namespace, key):
                return False
        with self.new_file(namespace) as pending:
            pending.write(data)
            pending.commit(digest)
            return pending.created

    def create_layout(self) -> None:  # noqa: B027 — a hook: most backends need nothing
        """Make what the backend keeps its objects in, before the hub serves (nothing, unless overridden)."""

    def put_many(self, namespace: str, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """Store several objects: every one is verified before any is written.

        Each ``(digest, data)`` must hash to its digest; a mismatch raises
        ``ContentMismatch`` and nothing is stored (LocalStore hashes while it
        writes temp files, and removes them). Then the objects not yet
        stored are written (a digest named twice is written once). When this
        returns, every object is durable as with ``put_bytes``; backends may
        batch that durability (LocalStore syncs a chunk's files and
        directories together).

        Returns:
            One flag per item, as ``put_bytes``: True where this call wrote it.

        Raises:
            ValueError, InvalidId, ContentMismatch, StorageError: as ``put_bytes``.
        """
        check_namespace(namespace)
        keys = verify_all(items)
        return [self.put_bytes(namespace, key, data) for key, (_, data) in zip(keys, items, strict=True)]

    @contextlib.contextmanager
    def new_file(self, namespace: str) -> Iterator[PendingFile]:
        """Context manager yielding a ``PendingFile`` to stream a new object into.

        Leaving the block without ``commit()``, or with an exception, removes
        the temp file.

        Raises:
            ValueError: unknown namespace.
            StorageError: the backend could not create a temp file.
        """
        pending = self._new_pending(check_namespace(namespace))
        try:
            yield pending
        finally:
            pending.abort()

    def verify(self, namespace: str, digest: str) -> bool:
        """True if the stored object still hashes to its name.

        Raises:
            StoredObjectMissing: the object is absent.
            StorageError: it cannot be read.
        """
        key = check_digest(digest)
        sha = hashlib.sha256()
        with self.open(namespace, key) as source:
            while chunk := source.read(VERIFY_CHUNK):
                sha.update(chunk)
        return sha.hexdigest() == key

    def intact(self, namespace: str, digest: str) -> bool:
        """True if the object is stored and hashes to its name (False if absent or damaged)."""
        try:
            return self.verify(namespace, digest)
        except StoredObjectMissing:
            return False

    def size(self, namespace: str, digest: str) -> int:
        """Size in bytes of a stored object; StoredObjectMissing if absent."""
        return self.stat(namespace, digest)[0]

    def presign_mpack_get(self, mpack_id: str, ttl_seconds: int) -> str:
        """A signed URL to the hub's own download route for this mpack.

        Raises:
            InvalidId: ``mpack_id`` is malformed.
            ValueError: ``ttl_seconds`` is not positive.
        """
        return self.signer.url("GET", mpack_path(mpack_id), ttl_seconds)

    def disk_space(self) -> tuple[int, int] | None:
        """(free, total) bytes of the filesystem the store writes to; None where that has no meaning (a bucket)."""
        return None

    def still_exists(self, namespace: str, digest: str) -> bool:
        """``exists`` for hot read paths (a cache hit's check): a backend whose ``exists`` is a network
        round trip may answer from its recent positive answers. Never for a check a write relies on."""
        return self.exists(namespace, digest)

    def delete_many(self, namespace: str, digests: Iterable[str]) -> int:
        """Delete several objects (batched where the backend can) → how many were asked for."""
        digests = list(digests)
        for digest in digests:
            self.delete(namespace, digest)
        return len(digests)

    def presign_put(self, repo_key: str, digest: str, ttl_seconds: int) -> str | None:
        """A URL a client may PUT an object's bytes to, or None if this store takes uploads inline."""
        return None

    def adopt_upload(self, repo_key: str, digest: str) -> int | None:
        """Verify and publish a presigned upload → its size; None if there is none (or it was wrong)."""
        return None

    @abc.abstractmethod
    def open(self, namespace: str, digest: str) -> BinaryIO:
        """A binary file object reading the object; StoredObjectMissing if absent."""

    @abc.abstractmethod
    def exists(self, namespace: str, digest: str) -> bool:
        """True if the object is stored."""

    @abc.abstractmethod
    def delete(self, namespace: str, digest: str) -> bool:
        """Remove the object; False if it was absent."""

    @abc.abstractmethod
    def iter_digests(self, namespace: str) -> Iterator[str]:
        """The hex digests stored in ``namespace``, in ascending order."""

    @abc.abstractmethod
    def stat(self, namespace: str, digest: str) -> tuple[int, float]:
        """``(size, mtime)`` of the object; StoredObjectMissing if absent."""

    def iter_mtimes(self, namespace: str) -> Iterator[tuple[str, float]]:
        """``(digest, mtime)`` of every object in ``namespace``, in ascending order (one ``stat`` each here;
        a bucket reads them off its listing). An object deleted meanwhile is left out."""
        for digest in self.iter_digests(namespace):
            try:
                yield digest, self.stat(namespace, digest)[1]
            except StoredObjectMissing:
                continue

    @abc.abstractmethod
    def iter_temp(self) -> Iterator[tuple[str, float]]:
        """``(name, mtime)`` of every temp file, including crash leftovers."""

    @abc.abstractmethod
    def remove_temp(self, name: str) -> bool:
        """Remove a temp file by name; False if absent, ValueError if not a temp name."""

    def iter_incoming(self) -> Iterator[tuple[str, float]]:
        """``(name, mtime)`` of every presigned upload not yet adopted by a push (``<repo>/<hex>``);
        none where the store takes no presigned uploads."""
        return iter(())

    def remove_incoming(self, name: str) -> bool:
        """Remove an upload ``iter_incoming`` listed; ValueError if ``name`` is not one of its names."""
        raise ValueError(f"{self!r} holds no presigned uploads")

    @abc.abstractmethod
    def quarantine(self, namespace: str, digest: str, *, keep_intact: bool = True) -> str | None:
        """Move a damaged object out of the store, kept for inspection → where it went.

        None when the object is absent or, with ``keep_intact``, when it hashes
        to its name at the moment it is moved (a writer repaired it meanwhile):
        it stays then. Pass ``keep_intact=False`` for an object whose bytes hash
        right but are wrong inside (a pack built from a damaged blob).
        """

    @abc.abstractmethod
    def probe_write(self) -> None:
        """Write and remove a small temp file; StorageError (StorageFull) if the store cannot take writes."""

    @abc.abstractmethod
    def local_path(self, namespace: str, digest: str) -> str | None:
        """The file path where the object lives, or None if the backend has no files."""

    def served_path(self, namespace: str, digest: str) -> str | None:
        """The object's file path relative to the namespace's directory, for a web server that serves
        that directory itself (nginx's ``X-Accel-Redirect``); None where objects are not files.

        Raises:
            StoredObjectMissing: the object is not stored.
        """
        return None

    @abc.abstractmethod
    def _new_pending(self, namespace: str) -> PendingFile:
        """Create a temp file for a new object in ``namespace``."""
