"""LocalStore.put_many (storage/local_batch.py): syncfs or per-file fsync, unnamed temps, the named-temp fallback, failures."""
from __future__ import annotations

import errno
import hashlib
import os
import threading

import pytest

from storage import BLOBS, LocalStore, local_batch, syncfs
from storage.errors import ContentMismatch, StorageError
from tests.test_storage_local import files_under, full_disk_fopen, make_signer, many_blobs

needs_tmpfile = pytest.mark.skipif(not local_batch.tmpfile_supported(), reason="no O_TMPFILE or /proc here")


@pytest.fixture
def root(tmp_path):
    return tmp_path / "store"


@pytest.fixture(params=[True, False], ids=["unnamed", "named"])
def unnamed(request):
    if request.param and not local_batch.tmpfile_supported():
        pytest.skip("no O_TMPFILE or /proc here")
    return request.param


@pytest.fixture(params=list(local_batch.BATCH_SYNCS))
def batch_sync(request):
    if request.param == local_batch.SYNCFS and not syncfs.AVAILABLE:
        pytest.skip("no syncfs here")
    return request.param


def stored_whole(store):
    for digest in store.iter_digests(BLOBS):
        with open(store.local_path(BLOBS, digest), "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == digest
    return sorted(store.iter_digests(BLOBS))


def test_a_store_writes_named_temps_unless_asked_otherwise(root):
    assert LocalStore(root, make_signer()).unnamed_temps is False


@needs_tmpfile
def test_put_many_names_no_temp_file_and_writes_private_single_link_files(root, monkeypatch):
    created = []
    real_open = os.open

    def spy_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            created.append(path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(local_batch.os, "open", spy_open)
    store = LocalStore(root, make_signer(), unnamed_temps=True)  # opt-in (off by default, docs/decisions.md)
    items = many_blobs(50)
    assert all(store.put_many(BLOBS, items))
    assert created == []  # not one named temp: each file was created without a name
    assert not (root / "tmp").exists()
    assert stored_whole(store) == sorted(d for d, _ in items)
    for digest, _ in items:
        st = os.stat(store.local_path(BLOBS, digest))
        assert (oct(st.st_mode & 0o777), st.st_nlink) == ("0o600", 1)


def test_put_many_without_o_tmpfile_falls_back_to_named_temps(root, monkeypatch):
    real_open = os.open

    def no_tmpfile(path, flags, *args, **kwargs):
        if local_batch.O_TMPFILE and flags & local_batch.O_TMPFILE == local_batch.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(local_batch.os, "open", no_tmpfile)
    store = LocalStore(root, make_signer(), unnamed_temps=True)
    items = many_blobs(20)
    assert all(store.put_many(BLOBS, items))
    assert store.unnamed_temps is False  # remembered: the next chunk does not try again
    assert stored_whole(store) == sorted(d for d, _ in items)
    assert list(store.iter_temp()) == []


@needs_tmpfile
def test_put_many_where_unnamed_files_cannot_be_linked_uses_named_temps(root):
    def link(src, dst):
        if src.startswith(local_batch.PROC_FD):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        local_batch.link_following(src, dst)

    store = LocalStore(root, make_signer(), link=link, unnamed_temps=True)
    items = many_blobs(10)
    assert all(store.put_many(BLOBS, items))
    assert store.unnamed_temps is False
    assert stored_whole(store) == sorted(d for d, _ in items) and list(store.iter_temp()) == []


@pytest.mark.parametrize("failing", ["write", "flush"])
def test_put_many_on_a_full_disk_leaves_no_object_and_no_temp(root, unnamed, batch_sync, failing):
    store = LocalStore(root, make_signer(), fopen=full_disk_fopen(failing), unnamed_temps=unnamed, batch_sync=batch_sync)
    with pytest.raises(StorageError, match="disk full"):
        store.put_many(BLOBS, many_blobs(5))
    assert list(store.iter_digests(BLOBS)) == [] and list(store.iter_temp()) == []


def test_put_many_failing_midway_through_the_links_publishes_only_whole_objects(root, unnamed, batch_sync):
    calls = []

    def link(src, dst):
        calls.append(dst)
        if len(calls) == 4:
            raise OSError(errno.EIO, "I/O error")
        local_batch.link_following(src, dst)

    store = LocalStore(root, make_signer(), link=link, unnamed_temps=unnamed, batch_sync=batch_sync)
    items = many_blobs(8)
    with pytest.raises(StorageError, match="EIO"):
        store.put_many(BLOBS, items)
    assert len(stored_whole(store)) == 3 and list(store.iter_temp()) == []
    assert sum(store.put_many(BLOBS, items)) == 5  # a retry writes the rest


def test_put_many_replaces_a_damaged_object_atomically(root, unnamed, batch_sync):
    store = LocalStore(root, make_signer(), unnamed_temps=unnamed, batch_sync=batch_sync)
    items = many_blobs(3)
    store.put_many(BLOBS, items)
    damaged = store.local_path(BLOBS, items[2][0])
    with open(damaged, "wb") as handle:
        handle.write(b"rot")
    assert store.put_many(BLOBS, items) == [False, False, True]
    assert stored_whole(store) == sorted(d for d, _ in items)
    assert list(store.iter_temp()) == [] and oct(os.stat(damaged).st_mode & 0o777) == "0o600"


def test_put_many_without_fsync_still_stores_everything(root, unnamed):
    store = LocalStore(root, make_signer(), fsync=False, unnamed_temps=unnamed)
    items = many_blobs(30)
    assert all(store.put_many(BLOBS, items))
    assert [p for p in files_under(root) if p.startswith("tmp")] == []
    assert stored_whole(store) == sorted(d for d, _ in items)


def spy_on_syncfs(monkeypatch, root, finals):
    """Record, at each syncfs, how many of ``finals`` exist and whether temps are there (the real call still runs)."""
    seen = []
    real = syncfs.syncfs

    def spy(path):
        seen.append((path, sum(os.path.exists(f) for f in finals)))
        real(path)

    monkeypatch.setattr(local_batch.syncfs, "syncfs", spy)
    return seen


@pytest.mark.skipif(not syncfs.AVAILABLE, reason="no syncfs here")
def test_a_chunk_is_synced_whole_before_any_object_gets_its_name_and_once_after(root, monkeypatch):
    store = LocalStore(root, make_signer())
    assert store.batch_sync == local_batch.SYNCFS  # the default
    items = many_blobs(40)
    finals = [store._locate(BLOBS, digest)[1] for digest, _ in items]
    seen = spy_on_syncfs(monkeypatch, root, finals)
    fsyncs = []
    monkeypatch.setattr(local_batch.os, "fsync", lambda fd: fsyncs.append(fd))
    assert all(store.put_many(BLOBS, items))
    assert seen == [(str(root), 0), (str(root), 40)]  # nothing named before the first flush; all before the second
    assert fsyncs == []  # no file or directory fsynced one by one
    assert stored_whole(store) == sorted(d for d, _ in items) and list(store.iter_temp()) == []


@pytest.mark.skipif(not syncfs.AVAILABLE, reason="no syncfs here")
def test_a_chunk_already_stored_is_not_synced_again(root, monkeypatch):
    store = LocalStore(root, make_signer())
    items = many_blobs(5)
    store.put_many(BLOBS, items)
    seen = spy_on_syncfs(monkeypatch, root, [])
    assert store.put_many(BLOBS, items) == [False] * 5
    assert seen == []


@pytest.mark.skipif(not syncfs.AVAILABLE, reason="no syncfs here")
@pytest.mark.parametrize("failing_call", [1, 2])
def test_a_failing_syncfs_fails_the_chunk_and_leaves_no_temp(root, monkeypatch, unnamed, failing_call):
    calls = []

    def failing(path):
        calls.append(path)
        if len(calls) == failing_call:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(local_batch.syncfs, "syncfs", failing)
    store = LocalStore(root, make_signer(), unnamed_temps=unnamed)
    items = many_blobs(6)
    with pytest.raises(StorageError, match="EIO"):
        store.put_many(BLOBS, items)
    assert list(store.iter_temp()) == []
    # Failing before the names: no object at all. After them: whole objects only, which a retry keeps.
    assert stored_whole(store) == ([] if failing_call == 1 else sorted(d for d, _ in items))


def test_batch_sync_fsync_syncs_each_file_and_never_the_whole_filesystem(root, monkeypatch):
    monkeypatch.setattr(local_batch.syncfs, "syncfs", lambda path: pytest.fail("syncfs was called"))
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(local_batch.os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    store = LocalStore(root, make_signer(), batch_sync="fsync")
    items = many_blobs(12)
    assert all(store.put_many(BLOBS, items))
    assert len(fsyncs) >= 12  # one per file, then one per directory that gained an entry
    assert stored_whole(store) == sorted(d for d, _ in items)


def test_where_syncfs_is_missing_a_syncfs_store_fsyncs_each_file(root, monkeypatch):
    monkeypatch.setattr(local_batch.syncfs, "AVAILABLE", False)
    monkeypatch.setattr(local_batch.syncfs, "syncfs", lambda path: pytest.fail("syncfs was called"))
    store = LocalStore(root, make_signer())
    items = many_blobs(4)
    assert all(store.put_many(BLOBS, items))
    assert stored_whole(store) == sorted(d for d, _ in items)


def test_an_unknown_batch_sync_is_refused(root):
    with pytest.raises(ValueError, match="batch_sync must be one of syncfs, fsync"):
        LocalStore(root, make_signer(), batch_sync="sometimes")


@pytest.mark.parametrize("bad_at", [0, 7])
def test_a_large_chunk_with_one_wrong_content_names_nothing_and_leaves_no_temp(root, unnamed, batch_sync, bad_at):
    """A chunk over HASH_AHEAD_BYTES is hashed on a helper thread while its temps are written:
    a mismatch found there still stores nothing, and the helper is gone when put_many returns."""
    items = many_blobs(8, size=local_batch.HASH_AHEAD_BYTES // 4)
    items[bad_at] = (items[bad_at][0], b"not what the id says" * 1000)
    store = LocalStore(root, make_signer(), unnamed_temps=unnamed, batch_sync=batch_sync)
    with pytest.raises(ContentMismatch):
        store.put_many(BLOBS, items)
    assert list(store.iter_digests(BLOBS)) == [] and list(store.iter_temp()) == []
    assert not any(t.name.startswith("put-many-verify") for t in threading.enumerate())
    del items[bad_at]
    assert all(store.put_many(BLOBS, items)) and len(stored_whole(store)) == 7
