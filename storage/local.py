"""LocalStore: a sharded content-addressed directory.

Layout under ``root``::

    <root>/blobs/<hex[0:2]>/<hex[2:4]>/<hex>    blob bytes
    <root>/mpacks/<hex[0:2]>/<hex[2:4]>/<hex>   mpack files
    <root>/tmp/<32 hex>.tmp                     objects being written

A file's name is the SHA-256 of its bytes, so anyone can check it with
``sha256sum``. Directories are created on demand.

A write goes to a temp file in ``<root>/tmp`` (the same filesystem, so the
publishing step is atomic), is flushed and fsynced, then hard-linked to its
final path (which never replaces an existing object; filesystems without
hard links fall back to rename) and the directory is fsynced. A final path
therefore never holds a partial file. A failed write removes its temp file;
a crash may leave one, which GC sweeps through ``iter_temp``/``remove_temp``.
Any ``OSError`` (a full disk, an I/O error) becomes ``StorageError``.

``put_many`` writes a chunk of objects with batched durability (issue 8): each
object is hashed once (``verify_all``) and written to its temp file, the temps
are fsynced in parallel (concurrent fsyncs share the filesystem's journal
commits), then linked into place, and then every directory that gained an
entry — new shard directories included — is fsynced once per chunk, not once
per object. It returns only after all of that, so the guarantees above hold:
no partial file at a final path, every object durable before the caller
answers.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, BinaryIO

from storage.base import (
    PendingFile,
    Store,
    check_digest,
    check_namespace,
    check_temp_name,
    is_temp_name,
    new_temp_name,
    verify_all,
)
from storage.errors import StorageError, StoredObjectMissing
from storage.signing import UrlSigner

_SHARD = re.compile(r"[0-9a-f]{2}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Threads that fsync a chunk's files (and directories) concurrently.
SYNC_THREADS = 8
# link() errors meaning "this filesystem has no hard links": fall back to rename.
_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def _storage_error(action: str, exc: OSError) -> StorageError:
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    why = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return StorageError(f"{action}: {why} ({name})")


class LocalStore(Store):
    """A content-addressed store in a local directory (see the module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        signer: UrlSigner,
        *,
        fsync: bool = True,
        fopen: Callable[..., IO[bytes]] = io.open,
        link: Callable[[str, str], None] = os.link,
    ) -> None:
        """Open (lazily create) a store rooted at ``root``.

        Args:
            root: the store directory; created on the first write.
            signer: signs the URLs of ``presign_mpack_get``.
            fsync: fsync files and directories (turn off only for throwaway
                stores: a crash may then lose acknowledged writes).
            fopen: opens files, as ``io.open``; injected by tests.
            link: hard-links a file, as ``os.link``; injected by tests.
        """
        super().__init__(signer)
        self.root = os.path.abspath(os.fspath(root))
        self.fsync = fsync
        self._fopen = fopen
        self._link = link
        self._tmp = os.path.join(self.root, "tmp")

    def __repr__(self) -> str:
        return f"LocalStore({self.root!r})"

    def open(self, namespace: str, digest: str) -> BinaryIO:
        key, path = self._locate(namespace, digest)
        try:
            return self._fopen(path, "rb")  # type: ignore[return-value]
        except FileNotFoundError:
            raise StoredObjectMissing(namespace, key) from None
        except OSError as exc:
            raise _storage_error(f"cannot open {namespace} object {key}", exc) from exc

    def exists(self, namespace: str, digest: str) -> bool:
        return os.path.isfile(self._locate(namespace, digest)[1])

    def delete(self, namespace: str, digest: str) -> bool:
        # Empty shard directories are kept: removing one could race a writer
        # that has just created it.
        key, path = self._locate(namespace, digest)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _storage_error(f"cannot delete {namespace} object {key}", exc) from exc
        return True

    def stat(self, namespace: str, digest: str) -> tuple[int, float]:
        key, path = self._locate(namespace, digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise StoredObjectMissing(namespace, key) from None
        except OSError as exc:
            raise _storage_error(f"cannot stat {namespace} object {key}", exc) from exc
        return st.st_size, st.st_mtime

    def iter_digests(self, namespace: str) -> Iterator[str]:
        return self._walk(os.path.join(self.root, check_namespace(namespace)))

    def _walk(self, base: str) -> Iterator[str]:
        for first in _names(base, _SHARD, dirs=True):
            for second in _names(os.path.join(base, first), _SHARD, dirs=True):
                for name in _names(os.path.join(base, first, second), _HEX64, dirs=False):
                    if name[:2] == first and name[2:4] == second:
                        yield name

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
        return self._locate(namespace, digest)[1]

    def _locate(self, namespace: str, digest: str) -> tuple[str, str]:
        """Validated hex key and final path of an object."""
        check_namespace(namespace)
        key = check_digest(digest)
        return key, os.path.join(self.root, namespace, key[:2], key[2:4], key)

    def _new_pending(self, namespace: str) -> PendingFile:
        name = new_temp_name()
        path = os.path.join(self._tmp, name)
        try:
            self._make_dirs(self._tmp)
            handle = self._fopen(path, "xb")
        except OSError as exc:
            raise _storage_error(f"cannot create a temp file for a {namespace} object", exc) from exc
        return _LocalPending(self, namespace, name, path, handle)

    def put_many(self, namespace: str, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """As ``Store.put_many``, with one fsync pass per chunk (see the module docstring)."""
        check_namespace(namespace)
        keys = verify_all(items)
        created = [False] * len(items)
        todo: dict[str, int] = {}
        for index, key in enumerate(keys):
            if key not in todo and not os.path.isfile(self._locate(namespace, key)[1]):
                todo[key] = index
        if not todo:
            return created
        temps: list[tuple[str, str]] = []  # (key, temp path)
        dirs: set[str] = set()  # directories that gained an entry, synced once at the end
        try:
            self._write_temps([(key, items[index][1]) for key, index in todo.items()], temps, dirs)
            for key, temp in temps:
                final = self._locate(namespace, key)[1]
                self._make_dirs(os.path.dirname(final), dirs)
                if self._link_into_place(temp, final, dirs):
                    created[todo[key]] = True
            self._sync_all(dirs, self._sync_dir)
        except OSError as exc:
            raise _storage_error(f"cannot store {len(todo)} {namespace} objects", exc) from exc
        finally:
            for _, temp in temps:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
        return created

    def _write_temps(self, items: list[tuple[str, bytes]], temps: list[tuple[str, str]], dirs: set[str]) -> None:
        """Write each object to a new temp file (appended to ``temps`` as it is created), then fsync them all."""
        self._make_dirs(self._tmp, dirs)
        handles: list[IO[bytes]] = []
        try:
            for key, data in items:
                path = os.path.join(self._tmp, new_temp_name())
                handle = self._fopen(path, "xb")
                temps.append((key, path))
                handles.append(handle)
                handle.write(data)
                handle.flush()
            if self.fsync:
                self._sync_all(handles, lambda h: os.fsync(h.fileno()))
        finally:
            for handle in handles:
                with contextlib.suppress(OSError):
                    handle.close()

    @staticmethod
    def _sync_all(targets: Iterable, sync: Callable) -> None:
        """``sync`` every target, concurrently when there are several; the first error is raised."""
        targets = list(targets)
        if len(targets) <= 1:
            for target in targets:
                sync(target)
            return
        with ThreadPoolExecutor(min(SYNC_THREADS, len(targets))) as pool:
            for _ in pool.map(sync, targets):
                pass

    def _make_dirs(self, path: str, unsynced: set[str] | None = None) -> None:
        """Create ``path`` and missing parents; each parent that gains an entry is synced now,
        or added to ``unsynced`` for the caller to sync (``put_many``)."""
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path)
        self._make_dirs(parent, unsynced)
        try:
            os.mkdir(path)
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
        """Give the temp file its final name without replacing an existing object.

        The directory is synced now, or added to ``unsynced`` for the caller to sync.
        """
        try:
            self._link(temp, final)
        except FileExistsError:
            # Touch it: GC's grace for files no row names counts from the latest
            # publication, which is when a URL to it may last have been issued.
            with contextlib.suppress(OSError):
                os.utime(final)
            return False
        except OSError as exc:
            if exc.errno not in _NO_HARDLINKS:
                raise
            if os.path.exists(final):
                return False
            os.replace(temp, final)  # same bytes if a racing writer got there first
        if unsynced is None:
            self._sync_dir(os.path.dirname(final))
        else:
            unsynced.add(os.path.dirname(final))
        return True


class _LocalPending(PendingFile):
    def __init__(self, store: LocalStore, namespace: str, name: str, path: str,
                 handle: IO[bytes]) -> None:
        super().__init__(namespace, name)
        self._store = store
        self._path = path
        self._handle = handle

    def _write(self, data: memoryview) -> None:
        try:
            self._handle.write(data)
        except OSError as exc:
            raise _storage_error(f"cannot write a {self.namespace} object", exc) from exc

    def _publish(self, digest: str) -> bool:
        store = self._store
        try:
            self._handle.flush()
            if store.fsync:
                os.fsync(self._handle.fileno())
            self._handle.close()
            final = store._locate(self.namespace, digest)[1]
            store._make_dirs(os.path.dirname(final))
            return store._link_into_place(self._path, final)
        except OSError as exc:
            raise _storage_error(f"cannot store {self.namespace} object {digest}", exc) from exc

    def _discard(self) -> None:
        # Best effort: a temp that cannot be removed now is swept by GC later.
        with contextlib.suppress(OSError):
            self._handle.close()
        with contextlib.suppress(OSError):
            os.unlink(self._path)


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
