"""LocalStore: a sharded content-addressed directory.

Layout under ``root``::

    <root>/blobs/<hex[0:2]>/<hex>               blob bytes
    <root>/mpacks/<hex[0:2]>/<hex>              mpack files
    <root>/tmp/<32 hex>.tmp                     objects being written
    <quarantine>/<namespace>/<hex>.<ns time>    damaged objects moved aside

One level of 256 shard directories, as git's loose objects: a push of a few
thousand blobs then creates and syncs at most 256 directories, not one per
blob (two levels made 65,536; issue 8 measured the difference). Objects that
an older version wrote two levels deep (``<hex[0:2]>/<hex[2:4]>/<hex>``) are
still found, listed, verified and deleted there; new writes go one level deep.

A file's name is the SHA-256 of its bytes, so anyone can check it with
``sha256sum``. Directories are created on demand, private to the owner
(0700), and files are written 0600: a store holds private repositories.

A write goes to a temp file in ``<root>/tmp`` (the same filesystem, so the
publishing step is atomic), is flushed and fsynced, then hard-linked to its
final path (which never replaces an existing object; filesystems without
hard links fall back to rename) and the directory is fsynced. A final path
therefore never holds a partial file. When the final path already holds a
file, its bytes are verified; a damaged one is atomically replaced. A failed write removes its temp file;
a crash may leave one, which GC sweeps through ``iter_temp``/``remove_temp``.
Any ``OSError`` (a full disk, an I/O error) becomes ``StorageError``.

``put_many`` writes a chunk of objects with batched durability (issue 8;
``storage/local_batch.py``): each object hashed once, written to a temp
file, the whole chunk made durable (two ``syncfs`` by default, or each file
and then each directory fsynced), then linked into place. It returns only
after all of that, so the guarantees above hold: no partial file at a final
path, every object durable before the caller answers. ``create_layout``
makes ``tmp`` and every shard directory up front (the hub calls it at start).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, BinaryIO

from storage import local_batch
from storage.base import (
    NAMESPACES,
    VERIFY_CHUNK,
    PendingFile,
    RecentlyFound,
    Store,
    check_digest,
    check_namespace,
    check_temp_name,
    is_temp_name,
    new_temp_name,
)
from storage.errors import StoredObjectMissing, from_os_error
from storage.local_pending import LocalPending
from storage.signing import UrlSigner

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
EXISTS_MEMO_SECONDS = 1.0  # how long still_exists trusts a positive answer
PROBE_BYTES = 4096  # one page: enough to hit a full disk, small enough to do on every health check
_SHARD = re.compile(r"[0-9a-f]{2}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class LocalStore(Store):
    """A content-addressed store in a local directory (see the module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        signer: UrlSigner,
        *,
        fsync: bool = True,
        fopen: Callable[..., IO[bytes]] = io.open,
        link: Callable[[str, str], None] = local_batch.link_following,
        quarantine_root: str | os.PathLike[str] | None = None,
        unnamed_temps: bool = False,
        batch_sync: str = local_batch.SYNCFS,
    ) -> None:
        """Open (lazily create) a store rooted at ``root``.

        Args:
            root: the store directory; created on the first write.
            signer: signs the URLs of ``presign_mpack_get``.
            fsync: fsync files and directories (turn off only for throwaway
                stores: a crash may then lose acknowledged writes).
            fopen: opens files, as ``io.open``; injected by tests.
            link: hard-links a file, as ``os.link`` but following a symbolic
                link at the source (``local_batch.link_following``: an
                unnamed file is named through ``/proc/self/fd/N``); injected by tests.
            quarantine_root: where ``quarantine`` moves damaged objects
                (default ``<root>/quarantine``; best on the same filesystem).
            unnamed_temps: let ``put_many`` write ``O_TMPFILE`` files where the
                system allows it (default False: named temps in ``<root>/tmp``).
                Off by default: a linked ``O_TMPFILE``'s link count reaches
                the disk only with the file's next inode write, which neither
                the file's fsync (before the link) nor the directory's makes
                on an ext4 without a journal, so a crash there could leave a
                name pointing at an inode recorded with no links; and it was
                measured no faster (docs/decisions.md).
            batch_sync: how ``put_many`` makes a chunk durable: ``"syncfs"``
                (default; two ``syncfs(2)`` per chunk, where the system has
                it) or ``"fsync"`` (each file, then each directory).
        """
        super().__init__(signer)
        self.root = os.path.abspath(os.fspath(root))
        self.fsync = fsync
        self._fopen = fopen
        self._link = link
        self.unnamed_temps = unnamed_temps and local_batch.tmpfile_supported()
        if batch_sync not in local_batch.BATCH_SYNCS:
            raise ValueError(f"batch_sync must be one of {', '.join(local_batch.BATCH_SYNCS)}, not {batch_sync!r}")
        self.batch_sync = batch_sync
        self._tmp = os.path.join(self.root, "tmp")
        self._found = RecentlyFound(EXISTS_MEMO_SECONDS)
        self.quarantine_root = os.path.abspath(os.fspath(quarantine_root or os.path.join(self.root, "quarantine")))

    def __repr__(self) -> str:
        return f"LocalStore({self.root!r})"

    def open(self, namespace: str, digest: str) -> BinaryIO:
        key, path = self._locate(namespace, digest)
        for candidate in (path, self._legacy(namespace, key)):
            try:
                return self._fopen(candidate, "rb")  # type: ignore[return-value]
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise from_os_error(f"cannot open {namespace} object {key}", exc) from exc
        raise StoredObjectMissing(namespace, key)

    def exists(self, namespace: str, digest: str) -> bool:
        key, path = self._locate(namespace, digest)
        return os.path.isfile(path) or os.path.isfile(self._legacy(namespace, key))

    def disk_space(self) -> tuple[int, int] | None:
        usage = shutil.disk_usage(self.root)
        return usage.free, usage.total

    def still_exists(self, namespace: str, digest: str) -> bool:
        """``exists``, trusting a positive answer for ``EXISTS_MEMO_SECONDS``: most cache hits then
        cost no ``stat`` (issue 8: nothing per hit beyond one lookup and one HMAC). A file removed
        outside this process (another worker's GC, which deletes only packs no live row names; or
        damage) is noticed that much later; what this store deletes or moves aside it forgets."""
        return self._found.ask(f"{namespace}/{check_digest(digest)}", lambda: self.exists(namespace, digest))

    def delete(self, namespace: str, digest: str) -> bool:
        # Empty shard directories are kept: removing one could race a writer
        # that has just created it.
        key, path = self._locate(namespace, digest)
        self._found.forget([f"{namespace}/{key}"])
        removed = False
        for candidate in (path, self._legacy(namespace, key)):
            try:
                os.unlink(candidate)
                removed = True
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise from_os_error(f"cannot delete {namespace} object {key}", exc) from exc
        return removed

    def stat(self, namespace: str, digest: str) -> tuple[int, float]:
        key, path = self._find(namespace, digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise StoredObjectMissing(namespace, key) from None
        except OSError as exc:
            raise from_os_error(f"cannot stat {namespace} object {key}", exc) from exc
        return st.st_size, st.st_mtime

    def iter_digests(self, namespace: str) -> Iterator[str]:
        return self._walk(os.path.join(self.root, check_namespace(namespace)))

    def _walk(self, base: str) -> Iterator[str]:
        for first in _names(base, _SHARD, dirs=True):
            shard = os.path.join(base, first)
            found = {name for name in _names(shard, _HEX64, dirs=False) if name[:2] == first}
            for second in _names(shard, _SHARD, dirs=True):  # objects an older version wrote two levels deep
                found.update(name for name in _names(os.path.join(shard, second), _HEX64, dirs=False)
                             if name[:2] == first and name[2:4] == second)
            yield from sorted(found)

    def iter_temp(self) -> Iterator[tuple[str, float]]:
        for name in _names(self._tmp, None, dirs=False):
            if not is_temp_name(name):
                continue
            try:
                yield name, os.stat(os.path.join(self._tmp, name)).st_mtime
            except FileNotFoundError:
                continue  # committed or removed since the listing

    def remove_temp(self, name: str) -> bool:
        path = os.path.join(self._tmp, check_temp_name(name))
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True

    def local_path(self, namespace: str, digest: str) -> str | None:
        return self._find(namespace, digest)[1]

    def served_path(self, namespace: str, digest: str) -> str | None:
        key, path = self._find(namespace, digest)
        if not os.path.isfile(path):
            raise StoredObjectMissing(namespace, key)
        return os.path.relpath(path, os.path.join(self.root, namespace))

    def probe_write(self) -> None:
        path = os.path.join(self._tmp, new_temp_name())
        try:
            self._make_dirs(self._tmp)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
            try:
                os.write(fd, bytes(PROBE_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        except OSError as exc:
            raise from_os_error("cannot write to the store", exc) from exc

    def quarantine(self, namespace: str, digest: str, *, keep_intact: bool = True) -> str | None:
        key, path = self._find(namespace, digest)
        self._found.forget([f"{namespace}/{key}"])
        aside = os.path.join(self.quarantine_root, namespace, f"{key}.{time.time_ns()}")
        try:
            self._make_dirs(os.path.dirname(aside))
            shutil.move(path, aside)  # a rename when on the same filesystem
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise from_os_error(f"cannot quarantine {namespace} object {key}", exc) from exc
        if keep_intact and _file_digest(aside) == key:  # repaired by a writer between the check and the move: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
            os.unlink(aside)
            return None
        return aside

    def _locate(self, namespace: str, digest: str) -> tuple[str, str]:
        """Validated hex key and final path of an object (where it is written)."""
        check_namespace(namespace)
        key = check_digest(digest)
        return key, os.path.join(self.root, namespace, key[:2], key)

    def _legacy(self, namespace: str, key: str) -> str:
        """Where an older version (two shard levels) wrote the object of a validated ``key``."""
        return os.path.join(self.root, namespace, key[:2], key[2:4], key)

    def _find(self, namespace: str, digest: str) -> tuple[str, str]:
        """Key and path of a stored object: its final path, or its legacy path when only that exists."""
        key, path = self._locate(namespace, digest)
        if not os.path.isfile(path):
            legacy = self._legacy(namespace, key)
            if os.path.isfile(legacy):
                return key, legacy
        return key, path

    def _new_pending(self, namespace: str) -> PendingFile:
        name = new_temp_name()
        path = os.path.join(self._tmp, name)
        try:
            self._make_dirs(self._tmp)
            handle = self._fopen(path, "xb", opener=_private_opener)
        except OSError as exc:
            raise from_os_error(f"cannot create a temp file for a {namespace} object", exc) from exc
        return LocalPending(self, namespace, name, path, handle)

    def create_layout(self) -> None:
        """Create ``tmp`` and every shard directory now, each synced once (each gunicorn worker calls this at start).

        A first push would otherwise create up to 512 directories while the
        client waits: on ext4 each directory is placed in a block group of its
        own, and creating one cost ~0.8 ms here against ~0.3 ms for a file.
        Directories already there cost a ``stat`` each.
        """
        created: set[str] = set()
        try:
            self._make_dirs(self._tmp, created)
            for namespace in NAMESPACES:
                for shard in range(256):
                    self._make_dirs(os.path.join(self.root, namespace, f"{shard:02x}"), created)
            local_batch.sync_all(created, self._sync_dir)
        except OSError as exc:
            raise from_os_error("cannot create the store's directories", exc) from exc

    def put_many(self, namespace: str, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """As ``Store.put_many``, one chunk written, synced and published together (``storage.local_batch``)."""
        try:
            return local_batch.put_many(self, namespace, items)
        except OSError as exc:
            raise from_os_error(f"cannot store {len(items)} {check_namespace(namespace)} objects", exc) from exc

    def _make_dirs(self, path: str, unsynced: set[str] | None = None) -> None:
        """Create ``path`` and missing parents; each parent that gains an entry is synced now,
        or added to ``unsynced`` for the caller to sync (``put_many``)."""
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path)
        self._make_dirs(parent, unsynced)
        try:
            os.mkdir(path, PRIVATE_DIR)
        except FileExistsError:
            return
        if unsynced is None:
            self._sync_dir(parent)
        else:
            unsynced.add(parent)

    def _sync_dir(self, path: str) -> None:
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _link_into_place(self, temp: str, final: str, unsynced: set[str] | None = None) -> bool:
        """Give the temp file its final name; an existing object is kept unless it is damaged.

        The directory is synced now, or added to ``unsynced`` for the caller to sync.
        """
        try:
            self._link(temp, final)
        except FileExistsError:
            if self._keep_existing(final):
                return False
            os.replace(temp, final)  # damaged: the new bytes take its place atomically
        except OSError as exc:
            if exc.errno not in local_batch.NO_HARDLINKS:
                raise
            if os.path.exists(final) and self._keep_existing(final):
                return False
            os.replace(temp, final)  # same bytes if a racing writer got there first
        if unsynced is None:
            self._sync_dir(os.path.dirname(final))
        else:
            unsynced.add(os.path.dirname(final))
        return True

    @staticmethod
    def _keep_existing(final: str) -> bool:
        """Whether the object already at ``final`` is intact (then it is touched and kept)."""
        try:
            intact = _file_digest(final) == os.path.basename(final)
        except FileNotFoundError:
            return False
        if intact:
            # Touch it: GC's grace for files no row names counts from the latest
            # publication, which is when a URL to it may last have been issued.
            with contextlib.suppress(OSError):
                os.utime(final)
        return intact



def _file_digest(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(VERIFY_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, PRIVATE_FILE)


def _names(path: str, pattern: re.Pattern[str] | None, *, dirs: bool) -> list[str]:
    """Sorted names in ``path`` of directories (or regular files) matching ``pattern``."""
    try:
        entries = list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        entry.name for entry in entries
        if (pattern is None or pattern.fullmatch(entry.name))
        and (entry.is_dir(follow_symlinks=False) if dirs else entry.is_file(follow_symlinks=False))
    )
