"""``LocalStore.put_many``: a chunk of objects written, synced and published together (issue 8).

For one chunk, in this order:

1. every object is hashed once and checked against its id (``verify_all``),
   on a helper thread while steps 2-4 run: one mismatch and nothing is named
   (the temps written meanwhile are removed);
2. objects already stored intact are skipped (a damaged one is written again);
3. the shard directories still missing are created — every metadata change
   before the first fsync (metadata operations that wait behind concurrent
   fsyncs for the journal cost more than the writes);
4. each object is written to a named temp file in ``<root>/tmp``, as
   ``put_bytes`` uses; or, for a store made with ``unnamed_temps=True``, to a
   file **without a name**: ``O_TMPFILE`` in its shard directory (Linux
   3.11+; ext4, xfs, btrfs, tmpfs), named temps where the filesystem or
   ``/proc`` does not allow that. Unnamed temps are off by default: no faster
   here, and weaker on an ext4 without a journal (see below);
5. the chunk is made durable: one ``syncfs`` of the store's filesystem
   (``batch_sync="syncfs"``, the default), or every file fsynced
   concurrently (``"fsync"``: concurrent fsyncs share journal commits);
6. only then does each file get its final name: ``linkat`` of
   ``/proc/self/fd/N`` (``link_following``) for an unnamed one — one
   directory entry per object, where a named temp costs three operations
   (create in ``tmp``, link, unlink) — or a hard link for a named one;
7. the names are made durable: one more ``syncfs``, or every directory that
   gained an entry fsynced once (not once per object).

``put_many`` returns after step 7, so everything is durable before the hub
answers. A final path never holds a partial or unsynced file, and a failure at
any step leaves no temp behind: an unnamed file vanishes when it is closed (a
crash cannot leave one either), a named one is unlinked. With per-file fsync,
an unnamed file linked to its final name is durable once its directory is
synced on a journalled filesystem (the link and the file's link count commit
together); without a journal the link count waits for the inode's next write,
which the second ``syncfs`` makes.
"""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Protocol

from storage import syncfs
from storage.base import check_digest, check_namespace, new_temp_name, verify_all

# Threads that fsync a chunk's files (and directories) concurrently.
SYNC_THREADS = 8
HASH_AHEAD_BYTES = 1 << 20  # a chunk this large is hashed on a helper thread while its temps are written
PROC_FD = "/proc/self/fd"
O_TMPFILE = getattr(os, "O_TMPFILE", 0)
# open(O_TMPFILE) errors meaning "not here": use named temp files.
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL, errno.ENOSYS}
# link() errors meaning "this filesystem has no hard links" (LocalStore falls back to rename).
NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


# How a chunk is made durable (``LocalStore(batch_sync=...)``, MPACKHUB_STORE_SYNC).
SYNCFS, FSYNC = "syncfs", "fsync"
BATCH_SYNCS = (SYNCFS, FSYNC)


class _Layout(Protocol):
    """What the batch needs of its ``LocalStore`` (paths, directories, hooks)."""

    root: str
    fsync: bool
    batch_sync: str
    unnamed_temps: bool
    _tmp: str
    _fopen: Callable[..., IO[bytes]]
    _link: Callable[[str, str], None]

    def intact(self, namespace: str, digest: str) -> bool: ...
    def _locate(self, namespace: str, digest: str) -> tuple[str, str]: ...
    def _make_dirs(self, path: str, unsynced: set[str] | None = None) -> None: ...
    def _sync_dir(self, path: str) -> None: ...
    def _link_into_place(self, temp: str, final: str, unsynced: set[str] | None = None) -> bool: ...
    def _keep_existing(self, final: str) -> bool: ...


def link_following(src: str, dst: str) -> None:
    """``link(src, dst)`` that follows a symbolic link at ``src`` (``linkat`` with ``AT_SYMLINK_FOLLOW``).

    Naming an unnamed file through ``/proc/self/fd/N`` needs that. ``os.link``
    calls plain ``link(2)``, which would link the symlink itself (and fail
    with EXDEV), unless a directory fd is passed: the destination's is.
    """
    parent = os.open(os.path.dirname(dst), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.link(src, os.path.basename(dst), dst_dir_fd=parent, follow_symlinks=True)
    finally:
        os.close(parent)


def tmpfile_supported() -> bool:
    """Whether unnamed files can be created and named here at all (``O_TMPFILE`` and ``/proc``)."""
    return bool(O_TMPFILE) and os.path.isdir(PROC_FD)


def put_many(store: _Layout, namespace: str, items: Sequence[tuple[str, bytes]]) -> list[bool]:
    """Write a chunk of objects (see the module docstring) → one flag per item: True where this call wrote it."""
    check_namespace(namespace)
    keys = [check_digest(digest) for digest, _ in items]
    with _Verifying(items) as verified:
        created = [False] * len(items)
        todo: dict[str, int] = {}
        for index, key in enumerate(keys):
            # A stored object is kept if it is intact; a damaged one is written again (replaced).
            if key not in todo and not store.intact(namespace, key):
                todo[key] = index
        if not todo:
            verified.wait()
            return created
        dirs: set[str] = set()  # directories that gained an entry, synced once at the end
        finals = {key: store._locate(namespace, key)[1] for key in todo}
        for final in finals.values():
            store._make_dirs(os.path.dirname(final), dirs)
        writes = [(key, finals[key], items[index][1]) for key, index in todo.items()]
        durability = _Verified(_durability(store), verified)
        published = _Unnamed(store, durability).write(writes, dirs) if store.unnamed_temps else None
        if published is None:  # unnamed files are not possible here: named temps
            published = _Named(store, durability).write(writes, dirs)
        for key in published:
            created[todo[key]] = True
        durability.directories(dirs)
        return created


class _Verifying:
    """The chunk's objects hashed on a helper thread while the main one writes their temps (step 1).

    Both run outside the GIL (hashlib and file writes release it), so on two
    cores a chunk costs about its writes, not its writes plus its hashing.
    Nothing is named before ``wait()`` returns: a mismatch then raises
    ``ContentMismatch`` and the temps written meanwhile are removed, as after
    any failure. A small chunk is hashed at once, in the caller's thread.
    """

    def __init__(self, items: Sequence[tuple[str, bytes]]) -> None:
        self.items = items
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future | None = None

    def __enter__(self) -> _Verifying:
        if sum(len(data) for _, data in self.items) < HASH_AHEAD_BYTES:
            verify_all(self.items)
        else:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="put-many-verify")
            self._future = self._pool.submit(verify_all, self.items)
        return self

    def wait(self) -> None:
        """Return once every object matched its id; ContentMismatch otherwise."""
        if self._future is not None:
            self._future.result()

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # never leave the helper hashing after the call


class _Verified:
    """A durability strategy that first waits for the chunk's verification: no name before it passed."""

    def __init__(self, inner: _Durability, verified: _Verifying) -> None:
        self.inner = inner
        self.verified = verified

    def files(self, handles: list[IO[bytes]]) -> None:
        self.verified.wait()
        self.inner.files(handles)

    def directories(self, dirs: set[str]) -> None:
        self.inner.directories(dirs)


class _Durability(Protocol):
    def files(self, handles: list[IO[bytes]]) -> None:
        """Make the chunk's written (flushed) files durable, before any gets its final name."""

    def directories(self, dirs: set[str]) -> None:
        """Make the names given since (and the directories created) durable."""


def _durability(store: _Layout) -> _Durability:
    if not store.fsync:
        return _NoSync()
    if store.batch_sync == SYNCFS and syncfs.AVAILABLE:
        return _WholeFilesystem(store.root)
    return _PerFile(store)


class _NoSync:
    """A throwaway store (``fsync=False``): nothing is synced."""

    def files(self, handles: list[IO[bytes]]) -> None:
        pass

    def directories(self, dirs: set[str]) -> None:
        pass


class _PerFile:
    """Each file fsynced, concurrently; then each directory that gained an entry, once."""

    def __init__(self, store: _Layout) -> None:
        self.store = store

    def files(self, handles: list[IO[bytes]]) -> None:
        sync_all(handles, lambda handle: os.fsync(handle.fileno()))

    def directories(self, dirs: set[str]) -> None:
        sync_all(dirs, self.store._sync_dir)


class _WholeFilesystem:
    """One ``syncfs`` before the files get their names and one after: two flushes per chunk, not one per file.

    The first makes every temp's bytes and inode durable, so a final name
    never points at unsynced data; the second makes the names (and new shard
    directories) durable before ``put_many`` returns.
    """

    def __init__(self, root: str) -> None:
        self.root = root

    def files(self, handles: list[IO[bytes]]) -> None:
        if handles:
            syncfs.syncfs(self.root)

    def directories(self, dirs: set[str]) -> None:
        if dirs:
            syncfs.syncfs(self.root)


def sync_all(targets: Iterable, sync: Callable) -> None:
    """``sync`` every target, concurrently when there are several; the first error is raised."""
    targets = list(targets)
    if len(targets) <= 1:
        for target in targets:
            sync(target)
        return
    with ThreadPoolExecutor(min(SYNC_THREADS, len(targets))) as pool:
        for _ in pool.map(sync, targets):
            pass


class _Unnamed:
    """Objects written to O_TMPFILE files in their shard directories, then linked to their names."""

    def __init__(self, store: _Layout, durability: _Durability) -> None:
        self.store = store
        self.durability = durability
        self.handles: list[tuple[str, str, IO[bytes]]] = []  # (key, final path, open unnamed file)

    def write(self, writes: list[tuple[str, str, bytes]], dirs: set[str]) -> list[str] | None:
        """Write, sync and name every object → the keys this call published; None if unnamed files cannot be made here."""
        try:
            for key, final, data in writes:
                handle = self._open(os.path.dirname(final))
                if handle is None:
                    return None
                self.handles.append((key, final, handle))
                handle.write(data)
                handle.flush()
            self.durability.files([h for _, _, h in self.handles])
            published = []
            for key, final, handle in self.handles:
                try:
                    if self._name(handle, final, dirs):
                        published.append(key)
                except OSError as exc:
                    if exc.errno in NO_HARDLINKS and not published:  # nothing named yet: named temps instead
                        self.store.unnamed_temps = False
                        return None
                    raise
            return published
        finally:
            for _, _, handle in self.handles:
                with contextlib.suppress(OSError):
                    handle.close()  # an unnamed file that was not linked vanishes here

    def _open(self, directory: str) -> IO[bytes] | None:
        try:
            fd = os.open(directory, O_TMPFILE | os.O_WRONLY, 0o600)
        except OSError as exc:
            if exc.errno in _NO_TMPFILE and not self.handles:
                self.store.unnamed_temps = False  # the filesystem says no: named temps from now on
                return None
            raise
        try:
            return self.store._fopen(fd, "xb")
        except BaseException:
            os.close(fd)
            raise

    def _name(self, handle: IO[bytes], final: str, dirs: set[str]) -> bool:
        """Link the synced unnamed file to ``final`` → whether it was published (an intact object there is kept)."""
        source = f"{PROC_FD}/{handle.fileno()}"
        try:
            self.store._link(source, final)
        except FileExistsError:
            if self.store._keep_existing(final):
                return False
            # Damaged: name the new bytes in tmp, then let them replace it atomically.
            self.store._make_dirs(self.store._tmp, dirs)
            temp = os.path.join(self.store._tmp, new_temp_name())
            self.store._link(source, temp)
            try:
                os.replace(temp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        dirs.add(os.path.dirname(final))
        return True


class _Named:
    """Objects written to named temp files in ``<root>/tmp``, then hard-linked into place (the fallback)."""

    def __init__(self, store: _Layout, durability: _Durability) -> None:
        self.store = store
        self.durability = durability
        self.temps: list[tuple[str, str, str]] = []  # (key, final path, temp path)

    def write(self, writes: list[tuple[str, str, bytes]], dirs: set[str]) -> list[str]:
        """Write, sync and link every object → the keys this call published; every temp is removed."""
        store = self.store
        try:
            store._make_dirs(store._tmp, dirs)
            handles: list[IO[bytes]] = []
            try:
                for key, final, data in writes:
                    path = os.path.join(store._tmp, new_temp_name())
                    handle = store._fopen(path, "xb", opener=_private_opener)
                    self.temps.append((key, final, path))
                    handles.append(handle)
                    handle.write(data)
                    handle.flush()
                self.durability.files(handles)
            finally:
                for handle in handles:
                    with contextlib.suppress(OSError):
                        handle.close()
            return [key for key, final, temp in self.temps if store._link_into_place(temp, final, dirs)]
        finally:
            for _, _, temp in self.temps:
                with contextlib.suppress(OSError):
                    os.unlink(temp)


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)
