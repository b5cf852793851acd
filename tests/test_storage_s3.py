"""What the S3 store adds to the storage contract, against a real S3 endpoint over HTTP.

The bucket is moto's standalone server; ``BucketFront`` in front of it checks
presigned URLs' SigV4 signatures (moto does not) and injects faults.
"""
from __future__ import annotations

import hashlib
import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from bench.s3_server import SECRET_KEY
from storage import BLOBS, MPACKS, UrlSigner
from storage.errors import StorageError, StorageUnavailable
from storage.s3 import SIGV4_MAX_TTL, S3Store
from storage.s3_client import S3Location, parse_store_url
from tests import database
from tests.s3_support import BucketFront
from tests.s3_support import bucket_http as http_get

# No database here: the same tests on the PostgreSQL run would only repeat the SQLite run.
pytestmark = pytest.mark.skipif(database.POSTGRES, reason="no database involved; run on the SQLite pass")

PART = 5 * 1024 * 1024  # S3's smallest part
DATA = b"hello bucket\n"
DIGEST = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def front(s3_endpoint):
    with BucketFront(s3_endpoint.url, SECRET_KEY) as proxy:
        yield proxy


@pytest.fixture
def store(s3_endpoint, bucket, front):
    """An S3 store talking to the bucket through the verifying front, retrying once."""
    client = s3_endpoint.client(front.url, max_attempts=2, connect_timeout=2, read_timeout=5)
    return S3Store(client, S3Location(bucket, "hub"), UrlSigner([("k1", b"x" * 16)], base_url="http://hub.test"),
                   part_size=PART)



def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


# -- the store URL -------------------------------------------------------------------

@pytest.mark.parametrize("url, bucket, prefix", [
    ("s3://packs", "packs", ""), ("s3://packs/", "packs", ""), ("s3://packs/hub/eu", "packs", "hub/eu"),
])
def test_store_url_names_bucket_and_prefix(url, bucket, prefix):
    assert parse_store_url(url) == S3Location(bucket, prefix)


@pytest.mark.parametrize("url", ["file:///x", "s3://", "s3:///prefix", "s3://b/p?x=1", "https://b/p"])
def test_other_store_urls_are_refused(url):
    with pytest.raises(ValueError):
        parse_store_url(url)


def test_objects_live_under_the_prefix_by_namespace_and_digest(store, s3_client, bucket):
    store.put_bytes(BLOBS, DIGEST, DATA)
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [f"hub/blobs/{DIGEST}"]


# -- presigned GETs: the bucket's own, SigV4, bounded --------------------------------

def test_presigned_get_is_sigv4_and_fetches_the_pack_from_the_bucket(store, front):
    store.put_bytes(MPACKS, DIGEST, DATA)
    url = store.presign_mpack_get("sha256:" + DIGEST, 300)
    query = dict(parse_qsl(urlsplit(url).query))
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and query["X-Amz-Expires"] == "300"
    assert url.startswith(front.url + "/")
    assert http_get(url) == (200, DATA)
    assert front.presigned_seen == [("GET", urlsplit(url).path, None)]


@pytest.mark.parametrize("tamper", [
    lambda url: url.replace("/mpacks/", "/blobs/"),
    lambda url: with_query(url, **{"X-Amz-Expires": "3600"}),
    lambda url: with_query(url, **{"X-Amz-Signature": "0" * 64}),
    lambda url: with_query(url, **{"X-Amz-Date": "20200101T000000Z"}),
])
def test_a_tampered_presigned_get_is_refused_by_the_bucket(store, tamper):
    store.put_bytes(MPACKS, DIGEST, DATA)
    store.put_bytes(BLOBS, DIGEST, DATA)
    status, _ = http_get(tamper(store.presign_mpack_get(DIGEST, 300)))
    assert status == 403


def test_a_presigned_get_is_not_a_put(store):
    store.put_bytes(MPACKS, DIGEST, DATA)
    status, _ = http_get(store.presign_mpack_get(DIGEST, 300), method="PUT", data=b"evil")
    assert status == 403
    with store.open(MPACKS, DIGEST) as handle:
        assert handle.read() == DATA


def test_presigned_url_lifetime_is_capped_at_seven_days(store):
    url = store.presign_mpack_get(DIGEST, 30 * 24 * 3600)
    assert dict(parse_qsl(urlsplit(url).query))["X-Amz-Expires"] == str(SIGV4_MAX_TTL)


# -- multipart: memory stays flat, nothing half-written is ever visible ---------------

def test_a_large_pack_goes_up_in_parts_while_it_is_written(store, s3_client, bucket):
    chunk = os.urandom(1024 * 1024)
    digest = hashlib.sha256(chunk * 11).hexdigest()
    with store.new_file(MPACKS) as pending:
        for _ in range(6):
            pending.write(chunk)
        upload = s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"][0]
        parts = s3_client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])["Parts"]
        assert [p["Size"] for p in parts] == [PART]  # one part sent, one MiB buffered
        assert not store.exists(MPACKS, digest)
        for _ in range(5):
            pending.write(chunk)
        assert pending.commit() == digest
    assert store.size(MPACKS, digest) == 11 * len(chunk)
    with store.open(MPACKS, digest) as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == digest
    assert list(store.iter_temp()) == []
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_failure_mid_upload_leaves_no_object_and_no_upload(store, front, s3_client, bucket):
    chunk = os.urandom(1024 * 1024)
    front.fail(503, when=lambda method, path: method == "PUT" and "partNumber=2" in path)
    with pytest.raises(StorageUnavailable), store.new_file(MPACKS) as pending:
        for _ in range(11):
            pending.write(chunk)
    front.fail(None)
    assert list(store.iter_digests(MPACKS)) == []
    assert list(store.iter_temp()) == []
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_temp_names_carry_their_creation_time(s3_client, bucket):
    store = S3Store(s3_client, S3Location(bucket, ""), UrlSigner([("k1", b"x" * 16)], base_url="http://hub.test"),
                    clock=lambda: 1_700_000_123)
    with store.new_file(BLOBS) as pending:
        pending.write(DATA)
        assert list(store.iter_temp()) == [(pending.name, 1_700_000_123.0)]


# -- faults: unavailable (retry later) vs refused -------------------------------------

@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("call", [
    lambda s: s.put_bytes(BLOBS, DIGEST, DATA),
    lambda s: s.open(BLOBS, DIGEST),
    lambda s: s.exists(BLOBS, DIGEST),
    lambda s: list(s.iter_digests(BLOBS)),
    lambda s: s.delete_many(BLOBS, [DIGEST]),
    lambda s: s.new_file(MPACKS).__enter__(),
])
def test_a_bucket_answering_5xx_is_storage_unavailable(store, front, status, call):
    front.fail(status)
    with pytest.raises(StorageUnavailable):
        call(store)


def test_an_unreachable_bucket_is_storage_unavailable(store, front):
    store.put_bytes(BLOBS, DIGEST, DATA)
    front.down()
    with pytest.raises(StorageUnavailable):
        store.open(BLOBS, DIGEST)
    with pytest.raises(StorageUnavailable):
        store.probe_write()


def test_a_refusal_is_a_storage_error_not_unavailable(store, front):
    front.fail(403)
    with pytest.raises(StorageError) as info:
        store.put_bytes(BLOBS, DIGEST, DATA)
    assert not isinstance(info.value, StorageUnavailable)


# -- GC's batches ---------------------------------------------------------------------

def test_delete_many_removes_a_batch_and_ignores_absent_objects(store, front):
    blobs = [os.urandom(16) for _ in range(5)]
    digests = [hashlib.sha256(b).hexdigest() for b in blobs]
    for data, digest in zip(blobs, digests, strict=True):
        store.put_bytes(MPACKS, digest, data)
    deletes = []
    front.fail(None)
    front.fault = lambda method, path: deletes.append((method, path)) if "delete" in path else None
    assert store.delete_many(MPACKS, digests[:3] + ["0" * 64]) == 4
    assert list(store.iter_digests(MPACKS)) == sorted(digests[3:])
    assert [m for m, _ in deletes] == ["POST"]  # one DeleteObjects request


# -- presigned uploads, verified before use --------------------------------------------

def test_a_presigned_put_is_adopted_after_its_hash_is_checked(store):
    big = os.urandom(200_000)
    digest = hashlib.sha256(big).hexdigest()
    url = store.presign_put("repo-1", digest, 300)
    assert http_get(url, method="PUT", data=big)[0] == 200
    assert not store.exists(BLOBS, digest)  # nothing is a blob until verified
    assert store.adopt_upload("repo-1", digest) == len(big)
    with store.open(BLOBS, digest) as handle:
        assert handle.read() == big
    assert store.adopt_upload("repo-1", digest) is None  # the upload is consumed


def test_a_presigned_put_with_other_bytes_is_dropped(store, s3_client, bucket):
    digest = hashlib.sha256(b"what was promised").hexdigest()
    assert http_get(store.presign_put("repo-1", digest, 300), method="PUT", data=b"something else")[0] == 200
    assert store.adopt_upload("repo-1", digest) is None
    assert not store.exists(BLOBS, digest)
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_a_presigned_put_goes_to_its_repository_only(store):
    digest = hashlib.sha256(DATA).hexdigest()
    http_get(store.presign_put("repo-1", digest, 300), method="PUT", data=DATA)
    assert store.adopt_upload("repo-2", digest) is None


def test_a_presigned_put_cannot_be_retargeted(store):
    digest = hashlib.sha256(DATA).hexdigest()
    url = store.presign_put("repo-1", digest, 300).replace("/incoming/repo-1/", "/blobs/")
    assert http_get(url, method="PUT", data=DATA)[0] == 403


def test_uploads_not_yet_adopted_are_listed_and_removed_by_name(store):
    digest = hashlib.sha256(DATA).hexdigest()
    http_get(store.presign_put("repo-1", digest, 300), method="PUT", data=DATA)
    (name, mtime), = store.iter_incoming()
    assert name == f"repo-1/{digest}" and mtime > 0
    assert store.remove_incoming(name) is True
    assert list(store.iter_incoming()) == [] and store.adopt_upload("repo-1", digest) is None
    assert store.remove_incoming(name) is False


@pytest.mark.parametrize("name", ["repo-1", f"../blobs/{DIGEST}", f"repo 1/{DIGEST}", "repo-1/" + "0" * 63])
def test_remove_incoming_takes_only_upload_names(store, name):
    with pytest.raises(ValueError):
        store.remove_incoming(name)


def test_an_adopted_upload_is_no_longer_listed(store):
    digest = hashlib.sha256(DATA).hexdigest()
    http_get(store.presign_put("repo-1", digest, 300), method="PUT", data=DATA)
    assert store.adopt_upload("repo-1", digest) == len(DATA)
    assert list(store.iter_incoming()) == []


# -- repair and fsck -------------------------------------------------------------------

def test_a_write_over_a_damaged_object_repairs_it(store, s3_client, bucket):
    store.put_bytes(BLOBS, DIGEST, DATA)
    s3_client.put_object(Bucket=bucket, Key=f"hub/blobs/{DIGEST}", Body=b"bit rot")
    assert store.intact(BLOBS, DIGEST) is False
    assert store.put_bytes(BLOBS, DIGEST, DATA) is True
    assert store.intact(BLOBS, DIGEST) is True
    assert store.put_bytes(BLOBS, DIGEST, DATA) is False  # intact now: kept


def test_a_damaged_pack_is_repaired_by_building_it_again(store, s3_client, bucket):
    chunk = os.urandom(PART + 1000)  # over one part: the multipart path
    digest = hashlib.sha256(chunk).hexdigest()
    with store.new_file(MPACKS) as pending:
        pending.write(chunk)
        pending.commit()
    s3_client.put_object(Bucket=bucket, Key=f"hub/mpacks/{digest}", Body=b"truncated")
    with store.new_file(MPACKS) as pending:
        pending.write(chunk)
        pending.commit()
        assert pending.created is True
    assert store.intact(MPACKS, digest)


def test_quarantine_moves_a_damaged_object_aside_and_keeps_an_intact_one(store, s3_client, bucket):
    store.put_bytes(BLOBS, DIGEST, DATA)
    assert store.quarantine(BLOBS, DIGEST) is None  # intact: stays
    s3_client.put_object(Bucket=bucket, Key=f"hub/blobs/{DIGEST}", Body=b"bit rot")
    aside = store.quarantine(BLOBS, DIGEST)
    assert aside.startswith(f"s3://{bucket}/hub/quarantine/blobs/{DIGEST}.")
    assert not store.exists(BLOBS, DIGEST)
    assert store.quarantine(BLOBS, DIGEST) is None  # absent


def test_probe_write_leaves_nothing_behind(store, s3_client, bucket):
    store.probe_write()
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_still_exists_trusts_a_recent_answer_and_forgets_what_it_deletes(store, front):
    store.put_bytes(MPACKS, DIGEST, DATA)
    heads = []
    front.fault = lambda method, path: heads.append(path) if method == "HEAD" else None
    assert store.still_exists(MPACKS, DIGEST) and store.still_exists(MPACKS, DIGEST)
    assert len(heads) == 1  # a cache hit's check costs the bucket one HEAD per half minute, not one per hit
    store.delete_many(MPACKS, [DIGEST])
    assert store.still_exists(MPACKS, DIGEST) is False
    assert store.exists(MPACKS, DIGEST) is False
