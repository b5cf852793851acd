"""LocalStore specifics: the layout on disk, temp files, and I/O failures."""
from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor

import pytest

from storage import BLOBS, MPACKS, LocalStore, MemoryStore, UrlSigner, local, local_batch
from storage.errors import StorageError, StoredObjectMissing

DATA = b"hello muse\n"
DIGEST = hashlib.sha256(DATA).hexdigest()
BIG = bytes(range(256)) * 8192  # 2 MiB
BIG_DIGEST = hashlib.sha256(BIG).hexdigest()


def make_signer():
    return UrlSigner([("k1", b"secret-one")], base_url="https://hub.test")


@pytest.fixture
def root(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def store(root):
    return LocalStore(root, make_signer())


def files_under(path):
    return sorted(
        os.path.relpath(os.path.join(parent, name), path)
        for parent, _, names in os.walk(path) for name in names
    )


class FailingFile:
    """A real file whose write (or flush) fails like a full disk."""

    def __init__(self, handle, failing):
        self._handle = handle
        self._failing = failing

    def __getattr__(self, name):
        if name == self._failing:
            def fail(*args):
                raise OSError(errno.ENOSPC, "No space left on device")
            return fail
        return getattr(self._handle, name)


def full_disk_fopen(failing="write"):
    def fopen(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)  # noqa: SIM115 - an fopen returns the handle
        return FailingFile(handle, failing) if "x" in mode else handle
    return fopen


# -- layout -------------------------------------------------------------------------

def test_objects_live_at_sharded_paths(store, root):
    store.put_bytes(BLOBS, DIGEST, DATA)
    store.put_many(MPACKS, [(DIGEST, DATA)])
    shard = os.path.join(DIGEST[:2], DIGEST)  # one level of 256 directories
    assert files_under(root) == [os.path.join(BLOBS, shard), os.path.join(MPACKS, shard)]


def test_local_path_is_the_sharded_path(store, root):
    expected = os.path.join(root, MPACKS, DIGEST[:2], DIGEST)
    assert store.local_path(MPACKS, "sha256:" + DIGEST) == expected


def test_root_and_shard_directories_are_created_on_demand(tmp_path):
    store = LocalStore(tmp_path / "a" / "b", make_signer())
    assert not (tmp_path / "a").exists()
    store.put_bytes(BLOBS, DIGEST, DATA)
    assert os.path.isfile(store.local_path(BLOBS, DIGEST))


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils sha256sum")
def test_sha256sum_of_a_stored_file_equals_its_name(store):
    store.put_bytes(MPACKS, BIG_DIGEST, BIG)
    path = store.local_path(MPACKS, BIG_DIGEST)
    output = subprocess.run(["sha256sum", path], check=True, capture_output=True, text=True).stdout
    assert output.split()[0] == os.path.basename(path) == BIG_DIGEST


def test_open_returns_a_real_file(store):
    store.put_bytes(BLOBS, DIGEST, DATA)
    with store.open(BLOBS, DIGEST) as handle:
        assert handle.name == store.local_path(BLOBS, DIGEST)
        assert handle.fileno() >= 0


def test_iter_digests_skips_names_that_are_not_objects(store, root):
    store.put_bytes(BLOBS, DIGEST, DATA)
    shard = root / BLOBS / DIGEST[:2]
    (shard / "notes.txt").write_bytes(b"x")
    (shard / DIGEST.upper()).write_bytes(b"x")
    (shard / ("0" * 64)).write_bytes(b"x")  # a hex name in the wrong shard
    (root / BLOBS / "zz").mkdir()
    (root / BLOBS / "README").write_bytes(b"x")
    assert list(store.iter_digests(BLOBS)) == [DIGEST]


def test_fsync_off_still_stores(root):
    store = LocalStore(root, make_signer(), fsync=False)
    assert store.put_bytes(BLOBS, DIGEST, DATA) is True
    assert store.exists(BLOBS, DIGEST)


# -- temp files ---------------------------------------------------------------------

def test_temp_files_are_written_inside_the_store_root(store, root):
    with store.new_file(MPACKS) as pending:
        pending.write(DATA)
        assert files_under(root) == [os.path.join("tmp", pending.name)]
        pending.commit()


def test_iter_temp_lists_crash_leftovers_with_their_mtime(store, root):
    (root / "tmp").mkdir(parents=True)
    leftover = root / "tmp" / ("ab" * 16 + ".tmp")
    leftover.write_bytes(b"half an mpack")
    os.utime(leftover, (1_000_000, 1_000_000))
    assert list(store.iter_temp()) == [(leftover.name, 1_000_000.0)]


def test_iter_temp_ignores_foreign_names(store, root):
    (root / "tmp").mkdir(parents=True)
    (root / "tmp" / "editor.swp").write_bytes(b"x")
    assert list(store.iter_temp()) == []


def test_remove_temp_deletes_a_leftover(store, root):
    (root / "tmp").mkdir(parents=True)
    leftover = root / "tmp" / ("cd" * 16 + ".tmp")
    leftover.write_bytes(b"x")
    assert store.remove_temp(leftover.name) is True
    assert not leftover.exists()


# -- failures -----------------------------------------------------------------------

@pytest.mark.parametrize("failing", ["write", "flush"])
def test_full_disk_becomes_storage_error_and_leaves_nothing(root, failing):
    store = LocalStore(root, make_signer(), fopen=full_disk_fopen(failing))
    with pytest.raises(StorageError, match="disk full"):
        store.put_bytes(MPACKS, DIGEST, DATA)
    assert files_under(root) == []


def test_failure_to_create_the_temp_becomes_storage_error(root):
    def fopen(path, mode="r", *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    store = LocalStore(root, make_signer(), fopen=fopen)
    with pytest.raises(StorageError, match="EACCES"):
        store.put_bytes(BLOBS, DIGEST, DATA)


def test_failure_to_link_into_place_becomes_storage_error_and_removes_the_temp(root):
    def link(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    store = LocalStore(root, make_signer(), link=link)
    with pytest.raises(StorageError, match="disk full"):
        store.put_bytes(BLOBS, DIGEST, DATA)
    assert files_under(root) == []


def test_filesystem_without_hard_links_falls_back_to_rename(root):
    def link(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    store = LocalStore(root, make_signer(), link=link)
    assert store.put_bytes(BLOBS, DIGEST, DATA) is True
    assert store.put_bytes(BLOBS, DIGEST, DATA) is False
    assert files_under(root) == [os.path.join(BLOBS, DIGEST[:2], DIGEST)]


def test_storage_error_does_not_reveal_paths(root):
    store = LocalStore(root, make_signer(), fopen=full_disk_fopen())
    with pytest.raises(StorageError) as info:
        store.put_bytes(BLOBS, DIGEST, DATA)
    assert str(root) not in info.value.detail


# -- several processes --------------------------------------------------------------

def put_big_in_child(root):
    return LocalStore(root, make_signer()).put_bytes(MPACKS, BIG_DIGEST, BIG)


def test_processes_putting_one_digest_store_one_intact_file(root):
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=4, mp_context=context) as pool:
        results = list(pool.map(put_big_in_child, [str(root)] * 4))
    assert results.count(True) == 1
    assert files_under(root) == [os.path.join(MPACKS, BIG_DIGEST[:2], BIG_DIGEST)]
    with LocalStore(root, make_signer()).open(MPACKS, BIG_DIGEST) as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == BIG_DIGEST


# -- put_many: batched durability ----------------------------------------------------

def many_blobs(count, size=0):
    """``count`` distinct (digest, content) pairs; contents padded to ``size`` bytes if given."""
    contents = [(b"blob %d\n" % n).ljust(size, b".") for n in range(count)]
    return [(hashlib.sha256(c).hexdigest(), c) for c in contents]


@pytest.fixture
def fsyncs(monkeypatch):
    """Every fsync, as 'dir' or 'file', with the order of events (fsync and link) kept."""
    events = []
    real_fsync, real_link = os.fsync, local_batch.link_following

    def fsync(fd):
        events.append(("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def link(src, dst):
        events.append(("link", dst))
        real_link(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(local_batch, "link_following", link)
    return events


def test_put_many_per_file_syncs_each_directory_once_per_chunk_not_once_per_object(root, fsyncs):
    store = LocalStore(root, make_signer(), link=lambda a, b: local_batch.link_following(a, b), batch_sync="fsync")
    items = many_blobs(300)
    assert all(store.put_many(BLOBS, items))
    files = [path for kind, path in fsyncs if kind == "file"]
    dirs = [path for kind, path in fsyncs if kind == "dir"]
    assert len(files) == 300  # each object's bytes, once
    assert len(dirs) == len(set(dirs))  # no directory synced twice in one chunk
    leaves = {os.path.dirname(store.local_path(BLOBS, digest)) for digest, _ in items}
    assert leaves <= set(dirs)  # every directory that gained an object was synced
    fsyncs.clear()
    for digest, content in many_blobs(300):  # the one-at-a-time path, for comparison
        store.delete(BLOBS, digest)
        store.put_bytes(BLOBS, digest, content)
    assert len([1 for kind, path in fsyncs if kind == "dir" and path in leaves]) == 300


def test_put_many_per_file_links_only_after_every_file_is_synced_and_answers_after_the_directories(root, fsyncs):
    store = LocalStore(root, make_signer(), link=lambda a, b: local_batch.link_following(a, b), batch_sync="fsync")
    store.put_many(BLOBS, many_blobs(40))
    kinds = [kind for kind, _ in fsyncs]
    assert kinds.index("link") > max(i for i, k in enumerate(kinds) if k == "file")  # no unsynced file is ever published
    assert kinds[-1] == "dir" and max(i for i, k in enumerate(kinds) if k == "link") < kinds.index("dir", kinds.index("link"))


@pytest.mark.parametrize("failing", ["write", "flush"])
def test_put_many_on_a_full_disk_is_a_storage_error_and_leaves_no_temp(root, failing):
    store = LocalStore(root, make_signer(), fopen=full_disk_fopen(failing))
    with pytest.raises(StorageError, match="disk full"):
        store.put_many(BLOBS, many_blobs(5))
    assert [p for p in files_under(root) if not p.startswith("tmp")] == [] and list(store.iter_temp()) == []


def test_put_many_failing_to_link_leaves_no_temp_and_no_partial_file(root):
    calls = []

    def link(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.EIO, "I/O error")
        local_batch.link_following(src, dst)

    store = LocalStore(root, make_signer(), link=link)
    items = many_blobs(5)
    with pytest.raises(StorageError, match="EIO"):
        store.put_many(BLOBS, items)
    assert list(store.iter_temp()) == []
    for digest in store.iter_digests(BLOBS):  # what was published before the failure is whole
        with open(store.local_path(BLOBS, digest), "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == digest
    assert all(store.put_many(BLOBS, items)[2:])  # and a retry completes the rest


def test_put_many_over_a_damaged_object_replaces_it_and_keeps_intact_ones(store):
    items = many_blobs(3)
    store.put_many(BLOBS, items)
    damaged = store.local_path(BLOBS, items[1][0])
    with open(damaged, "wb") as handle:
        handle.write(b"rot")
    assert store.put_many(BLOBS, items) == [False, True, False]
    with open(damaged, "rb") as handle:
        assert handle.read() == items[1][1]
    assert oct(os.stat(damaged).st_mode & 0o777) == "0o600"


# -- objects an older version wrote two shard levels deep ------------------------------

def legacy_put(root, namespace, content):
    digest = hashlib.sha256(content).hexdigest()
    path = root / namespace / digest[:2] / digest[2:4] / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return digest, str(path)


def test_objects_in_the_old_two_level_layout_are_still_found_listed_and_deleted(store, root):
    old, old_path = legacy_put(root, BLOBS, b"written by an older version")
    store.put_bytes(BLOBS, DIGEST, DATA)
    assert store.exists(BLOBS, old) and store.local_path(BLOBS, old) == old_path
    with store.open(BLOBS, old) as handle:
        assert handle.read() == b"written by an older version"
    assert store.stat(BLOBS, old)[0] == len(b"written by an older version") and store.verify(BLOBS, old)
    assert list(store.iter_digests(BLOBS)) == sorted([old, DIGEST])
    assert store.put_bytes(BLOBS, old, b"written by an older version") is False  # intact there: not written twice
    assert store.put_many(BLOBS, [(old, b"written by an older version")]) == [False]
    assert store.delete(BLOBS, old) is True and not store.exists(BLOBS, old)
    assert store.delete(BLOBS, old) is False


def test_a_damaged_object_in_the_old_layout_is_rewritten_in_the_new_one(store, root):
    old, old_path = legacy_put(root, MPACKS, b"pack bytes")
    with open(old_path, "wb") as handle:
        handle.write(b"rot")
    assert store.put_many(MPACKS, [(old, b"pack bytes")]) == [True]
    assert store.local_path(MPACKS, old) == str(root / MPACKS / old[:2] / old)
    assert store.verify(MPACKS, old)
    assert store.delete(MPACKS, old) and not os.path.exists(old_path)  # both copies gone
    assert list(store.iter_digests(MPACKS)) == []


def test_create_layout_makes_tmp_and_every_shard_directory_private_and_is_idempotent(root):
    store = LocalStore(root, make_signer())
    store.create_layout()
    for namespace in ("blobs", "mpacks"):
        shards = sorted(p.name for p in (root / namespace).iterdir())
        assert shards == [f"{n:02x}" for n in range(256)]
    assert oct((root / "blobs" / "a7").stat().st_mode & 0o777) == "0o700" and (root / "tmp").is_dir()
    store.create_layout()  # a restart: nothing to do, nothing lost
    items = many_blobs(3)
    assert all(store.put_many(BLOBS, items))
    store.create_layout()
    assert sorted(store.iter_digests(BLOBS)) == sorted(d for d, _ in items)


def test_a_first_put_many_after_create_layout_creates_no_directory(root, monkeypatch):
    store = LocalStore(root, make_signer())
    store.create_layout()
    made = []
    real_mkdir = os.mkdir
    monkeypatch.setattr(os, "mkdir", lambda path, *a, **k: (made.append(path), real_mkdir(path, *a, **k)))
    assert all(store.put_many(BLOBS, many_blobs(100)))
    assert made == []


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def memo_clock(store, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(store._found, "_clock", clock)
    return clock


def test_still_exists_trusts_a_found_pack_for_a_second_without_a_stat(store, memo_clock):
    """Issue 8: a cache hit costs no stat while its pack was seen in the last second."""
    digest, data = many_blobs(1)[0]
    store.put_bytes(MPACKS, digest, data)
    assert store.still_exists(MPACKS, digest)
    os.unlink(store.local_path(MPACKS, digest))  # removed behind the store's back (damage, another process)
    assert store.still_exists(MPACKS, digest)
    memo_clock.now += local.EXISTS_MEMO_SECONDS
    assert not store.still_exists(MPACKS, digest)


@pytest.mark.parametrize("remove", ["delete", "quarantine"])
def test_still_exists_forgets_what_the_store_itself_removes(store, memo_clock, remove):
    digest, data = many_blobs(1)[0]
    store.put_bytes(MPACKS, digest, data)
    assert store.still_exists(MPACKS, digest)
    getattr(store, remove)(MPACKS, digest, **({"keep_intact": False} if remove == "quarantine" else {}))
    assert not store.still_exists(MPACKS, digest) and not store.exists(MPACKS, digest)


def test_still_exists_never_remembers_an_absence(store, memo_clock):
    digest, data = many_blobs(1)[0]
    assert not store.still_exists(MPACKS, digest)
    store.put_bytes(MPACKS, digest, data)
    assert store.still_exists(MPACKS, digest)


# -- a web server's view of the files (MPACKHUB_ACCEL_REDIRECT) -------------------------

def test_served_path_is_the_files_place_under_its_namespace_in_either_layout(store, root):
    store.put_bytes(MPACKS, DIGEST, DATA)
    old, _ = legacy_put(root, MPACKS, b"written by an older version")
    assert store.served_path(MPACKS, DIGEST) == f"{DIGEST[:2]}/{DIGEST}"
    assert store.served_path(MPACKS, old) == f"{old[:2]}/{old[2:4]}/{old}"
    assert (root / MPACKS / store.served_path(MPACKS, DIGEST)).read_bytes() == DATA


def test_served_path_of_a_missing_object_is_an_error(store):
    with pytest.raises(StoredObjectMissing):
        store.served_path(MPACKS, DIGEST)


def test_a_store_without_files_has_no_served_path():
    store = MemoryStore(make_signer())
    store.put_bytes(MPACKS, DIGEST, DATA)
    assert store.served_path(MPACKS, DIGEST) is None
