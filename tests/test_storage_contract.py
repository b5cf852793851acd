"""The promises every store keeps, checked against each backend."""
from __future__ import annotations

import hashlib
import threading
from urllib.parse import parse_qsl, urlsplit

import pytest

from mpack.format.errors import InvalidId
from storage import BLOBS, MPACKS, LocalStore, MemoryStore, UrlSigner
from storage.errors import ContentMismatch, StorageError, StoredObjectMissing
from storage.s3 import S3Store
from storage.s3_client import S3Location

DATA = b"hello muse\n"
DIGEST = hashlib.sha256(DATA).hexdigest()
OTHER = b"another object"
OTHER_DIGEST = hashlib.sha256(OTHER).hexdigest()
NOW = 1_700_000_000


@pytest.fixture
def signer():
    return UrlSigner([("k1", b"secret-one")], base_url="https://hub.test/", clock=lambda: NOW)


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, tmp_path, signer):
    if request.param == "local":
        return LocalStore(tmp_path / "store", signer)
    if request.param == "s3":  # a real S3 endpoint over HTTP (moto's server), a fresh bucket
        client, bucket = request.getfixturevalue("s3_client"), request.getfixturevalue("bucket")
        return S3Store(client, S3Location(bucket, "contract"), signer, clock=lambda: NOW)
    return MemoryStore(signer, clock=lambda: NOW)


def read_all(store, namespace, digest):
    with store.open(namespace, digest) as handle:
        return handle.read()


# -- put / open / exists / delete / iterate -----------------------------------------

def test_put_then_open_returns_the_bytes(store):
    store.put_bytes(BLOBS, DIGEST, DATA)
    assert read_all(store, BLOBS, DIGEST) == DATA


def test_put_returns_true_when_written_and_false_when_present(store):
    assert store.put_bytes(BLOBS, DIGEST, DATA) is True
    assert store.put_bytes(BLOBS, DIGEST, DATA) is False


def test_exists_follows_put_and_delete(store):
    assert not store.exists(BLOBS, DIGEST)
    store.put_bytes(BLOBS, DIGEST, DATA)
    assert store.exists(BLOBS, DIGEST)
    store.delete(BLOBS, DIGEST)
    assert not store.exists(BLOBS, DIGEST)


def test_delete_reports_whether_something_was_removed(store):
    store.put_bytes(BLOBS, DIGEST, DATA)
    assert store.delete(BLOBS, DIGEST) is True
    assert store.delete(BLOBS, DIGEST) is False


def test_size_and_stat_describe_the_object(store):
    store.put_bytes(BLOBS, DIGEST, DATA)
    size, mtime = store.stat(BLOBS, DIGEST)
    assert store.size(BLOBS, DIGEST) == size == len(DATA)
    assert isinstance(mtime, float | int)


@pytest.mark.parametrize("call", ["open", "size", "stat"])
def test_reading_a_missing_object_raises_stored_object_missing(store, call):
    with pytest.raises(StoredObjectMissing) as info:
        getattr(store, call)(BLOBS, DIGEST)
    assert info.value.code == "stored_object_missing"
    assert info.value.digest == DIGEST


def test_iter_digests_lists_the_stored_digests_in_order(store):
    store.put_bytes(BLOBS, DIGEST, DATA)
    store.put_bytes(BLOBS, OTHER_DIGEST, OTHER)
    assert list(store.iter_digests(BLOBS)) == sorted([DIGEST, OTHER_DIGEST])


def test_iter_mtimes_lists_each_digest_in_order_with_the_mtime_stat_gives(store):
    store.put_bytes(BLOBS, DIGEST, DATA)
    store.put_bytes(BLOBS, OTHER_DIGEST, OTHER)
    listed = list(store.iter_mtimes(BLOBS))
    assert [digest for digest, _ in listed] == sorted([DIGEST, OTHER_DIGEST])
    assert all(abs(mtime - store.stat(BLOBS, digest)[1]) < 1.0 for digest, mtime in listed)
    assert list(store.iter_mtimes(MPACKS)) == []


def test_iter_digests_of_an_empty_store_is_empty(store):
    assert list(store.iter_digests(MPACKS)) == []


def test_namespaces_are_separate(store):
    store.put_bytes(BLOBS, DIGEST, DATA)
    assert not store.exists(MPACKS, DIGEST)
    assert list(store.iter_digests(MPACKS)) == []
    assert store.delete(MPACKS, DIGEST) is False


def test_prefixed_id_is_stored_under_its_hex(store):
    store.put_bytes(BLOBS, "sha256:" + DIGEST, DATA)
    assert list(store.iter_digests(BLOBS)) == [DIGEST]
    assert store.exists(BLOBS, "sha256:" + DIGEST)
    assert read_all(store, BLOBS, "sha256:" + DIGEST) == DATA


def test_an_object_opened_before_delete_stays_readable(store):
    store.put_bytes(MPACKS, DIGEST, DATA)
    with store.open(MPACKS, DIGEST) as handle:
        store.delete(MPACKS, DIGEST)
        assert handle.read() == DATA


# -- bad input ----------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda s: s.put_bytes("objects", DIGEST, DATA),
    lambda s: s.exists("../blobs", DIGEST),
    lambda s: s.open("", DIGEST),
    lambda s: s.delete("BLOBS", DIGEST),
    lambda s: s.iter_digests("tmp"),
    lambda s: s.new_file("mpack").__enter__(),
])
def test_unknown_namespace_is_a_value_error(store, call):
    with pytest.raises(ValueError):
        call(store)


@pytest.mark.parametrize("digest", [
    "", "abc", DIGEST.upper(), DIGEST + "0", DIGEST[:-1], "../" + DIGEST[3:],
    DIGEST[:62] + "/x", "sha256:" + DIGEST[:-1], DIGEST + "\n", None, 42,
])
def test_malformed_digest_is_refused_before_use(store, digest):
    with pytest.raises(InvalidId):
        store.exists(BLOBS, digest)
    with pytest.raises(InvalidId):
        store.put_bytes(BLOBS, digest, DATA)


def test_content_mismatch_is_refused_and_leaves_nothing(store):
    with pytest.raises(ContentMismatch) as info:
        store.put_bytes(BLOBS, OTHER_DIGEST, DATA)
    assert info.value.actual_hex == DIGEST
    assert not store.exists(BLOBS, OTHER_DIGEST)
    assert not store.exists(BLOBS, DIGEST)
    assert list(store.iter_temp()) == []


def test_content_mismatch_is_refused_even_when_the_digest_exists(store):
    store.put_bytes(BLOBS, DIGEST, DATA)
    with pytest.raises(ContentMismatch):
        store.put_bytes(BLOBS, DIGEST, OTHER)
    assert read_all(store, BLOBS, DIGEST) == DATA


# -- new_file -----------------------------------------------------------------------

def test_new_file_hashes_while_writing_and_commits_under_its_digest(store):
    with store.new_file(MPACKS) as pending:
        pending.write(DATA[:4])
        pending.write(DATA[4:])
        assert pending.size == len(DATA)
        assert pending.sha256_hex == DIGEST
        assert pending.commit() == DIGEST
    assert read_all(store, MPACKS, DIGEST) == DATA
    assert list(store.iter_temp()) == []


def test_new_file_is_listed_as_temp_until_committed(store):
    with store.new_file(MPACKS) as pending:
        pending.write(DATA)
        assert [name for name, _ in store.iter_temp()] == [pending.name]
        pending.commit()
    assert list(store.iter_temp()) == []


def test_new_file_commit_accepts_the_expected_digest_in_either_spelling(store):
    with store.new_file(BLOBS) as pending:
        pending.write(DATA)
        assert pending.commit("sha256:" + DIGEST) == DIGEST
    assert store.exists(BLOBS, DIGEST)


def test_leaving_new_file_without_commit_leaves_no_temp_and_no_object(store):
    with store.new_file(BLOBS) as pending:
        pending.write(DATA)
    assert list(store.iter_temp()) == []
    assert not store.exists(BLOBS, DIGEST)


def test_exception_inside_new_file_removes_the_temp(store):
    with pytest.raises(RuntimeError), store.new_file(BLOBS) as pending:
        pending.write(DATA)
        raise RuntimeError("writer failed")
    assert list(store.iter_temp()) == []
    assert list(store.iter_digests(BLOBS)) == []


def test_commit_with_wrong_expected_digest_is_refused_and_removes_the_temp(store):
    with store.new_file(BLOBS) as pending:
        pending.write(DATA)
        with pytest.raises(ContentMismatch):
            pending.commit(OTHER_DIGEST)
        assert list(store.iter_temp()) == []
    assert list(store.iter_digests(BLOBS)) == []


def test_commit_with_malformed_expected_digest_is_refused(store):
    with store.new_file(BLOBS) as pending:
        pending.write(DATA)
        with pytest.raises(InvalidId):
            pending.commit("not-a-digest")
    assert list(store.iter_temp()) == []
    assert list(store.iter_digests(BLOBS)) == []


def test_commit_of_existing_content_keeps_the_object_and_drops_the_temp(store):
    store.put_bytes(BLOBS, DIGEST, DATA)
    with store.new_file(BLOBS) as pending:
        pending.write(DATA)
        assert pending.commit() == DIGEST
        assert pending.created is False
    assert list(store.iter_temp()) == []
    assert read_all(store, BLOBS, DIGEST) == DATA


def test_write_after_commit_is_refused(store):
    with store.new_file(BLOBS) as pending:
        pending.write(DATA)
        pending.commit()
        with pytest.raises(ValueError):
            pending.write(b"more")


def test_written_bytes_are_copied(store):
    buffer = bytearray(DATA)
    with store.new_file(BLOBS) as pending:
        pending.write(buffer)
        buffer[:] = b"X" * len(buffer)
        pending.commit()
    assert read_all(store, BLOBS, DIGEST) == DATA


def test_a_swept_temp_cannot_be_committed(store):
    with store.new_file(BLOBS) as pending:
        pending.write(DATA)
        assert store.remove_temp(pending.name) is True
        with pytest.raises(StorageError):
            pending.commit()
    assert not store.exists(BLOBS, DIGEST)


# -- temp sweeping ------------------------------------------------------------------

def test_remove_temp_of_an_unknown_name_is_false(store):
    assert store.remove_temp("0" * 32 + ".tmp") is False


@pytest.mark.parametrize("name", ["../blobs", "/etc/passwd", "x.tmp", "", "0" * 32])
def test_remove_temp_refuses_names_it_did_not_make(store, name):
    with pytest.raises(ValueError):
        store.remove_temp(name)


# -- concurrency --------------------------------------------------------------------

def test_concurrent_puts_of_one_digest_store_one_intact_object(store):
    data = bytes(range(256)) * 4096  # 1 MiB: long enough for the writers to overlap
    digest = hashlib.sha256(data).hexdigest()
    start = threading.Barrier(8)
    results = []

    def put():
        start.wait()
        results.append(store.put_bytes(MPACKS, digest, data))

    threads = [threading.Thread(target=put) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert list(store.iter_digests(MPACKS)) == [digest]
    assert read_all(store, MPACKS, digest) == data
    assert list(store.iter_temp()) == []


# -- signed URLs --------------------------------------------------------------------

def test_presign_mpack_get_points_at_the_download_route_and_verifies(store, signer):
    if store.signs_own_urls:
        pytest.skip("the bucket signs its own URLs: tests/test_storage_s3.py checks them")
    url = urlsplit(store.presign_mpack_get("sha256:" + DIGEST, 300))
    assert (url.scheme, url.netloc, url.path) == ("https", "hub.test", "/mpacks/" + DIGEST)
    params = dict(parse_qsl(url.query))
    assert params["expires"] == str(NOW + 300)
    signer.verify("GET", url.path, params)


def test_presign_mpack_get_refuses_a_malformed_id(store):
    with pytest.raises(InvalidId):
        store.presign_mpack_get("../etc/passwd", 300)


# -- put_many -------------------------------------------------------------------------

def blobs_of(*contents):
    return [(hashlib.sha256(c).hexdigest(), c) for c in contents]


def test_put_many_stores_every_object_and_flags_what_it_wrote(store):
    store.put_bytes(BLOBS, DIGEST, DATA)
    items = blobs_of(DATA, OTHER, b"third", OTHER)
    assert store.put_many(BLOBS, items) == [False, True, True, False]  # present, new, new, named twice
    for digest, content in items:
        assert read_all(store, BLOBS, digest) == content
    assert store.put_many(BLOBS, []) == []


def test_put_many_accepts_either_id_spelling(store):
    assert store.put_many(BLOBS, [("sha256:" + DIGEST, DATA)]) == [True]
    assert store.exists(BLOBS, DIGEST)


@pytest.mark.parametrize("bad_at", [0, 2])
def test_put_many_with_one_wrong_content_writes_nothing(store, bad_at):
    items = blobs_of(DATA, OTHER, b"third")
    items[bad_at] = (items[bad_at][0], b"not what the id says")
    with pytest.raises(ContentMismatch):
        store.put_many(BLOBS, items)
    assert list(store.iter_digests(BLOBS)) == [] and list(store.iter_temp()) == []


def test_put_many_with_a_malformed_id_writes_nothing(store):
    with pytest.raises(InvalidId):
        store.put_many(BLOBS, [*blobs_of(DATA), ("../etc/passwd", b"x")])
    assert list(store.iter_digests(BLOBS)) == []
