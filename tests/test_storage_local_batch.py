"""LocalStore.put_many (storage/local_batch.py): unnamed O_TMPFILE files, the named-temp fallback, failures."""
from __future__ import annotations

import errno
import hashlib
import os

import pytest

from storage import BLOBS, LocalStore, local_batch
from storage.errors import StorageError
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
def test_put_many_on_a_full_disk_leaves_no_object_and_no_temp(root, unnamed, failing):
    store = LocalStore(root, make_signer(), fopen=full_disk_fopen(failing), unnamed_temps=unnamed)
    with pytest.raises(StorageError, match="disk full"):
        store.put_many(BLOBS, many_blobs(5))
    assert list(store.iter_digests(BLOBS)) == [] and list(store.iter_temp()) == []


def test_put_many_failing_midway_through_the_links_publishes_only_whole_objects(root, unnamed):
    calls = []

    def link(src, dst):
        calls.append(dst)
        if len(calls) == 4:
            raise OSError(errno.EIO, "I/O error")
        local_batch.link_following(src, dst)

    store = LocalStore(root, make_signer(), link=link, unnamed_temps=unnamed)
    items = many_blobs(8)
    with pytest.raises(StorageError, match="EIO"):
        store.put_many(BLOBS, items)
    assert len(stored_whole(store)) == 3 and list(store.iter_temp()) == []
    assert sum(store.put_many(BLOBS, items)) == 5  # a retry writes the rest


def test_put_many_replaces_a_damaged_object_atomically(root, unnamed):
    store = LocalStore(root, make_signer(), unnamed_temps=unnamed)
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
