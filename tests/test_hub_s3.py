"""The hub on an S3 store (MPACKHUB_STORE_URL=s3://…): bucket URLs, presigned uploads, faults, GC.

The bucket is moto's server over HTTP behind ``BucketFront``, which checks the
SigV4 signature of every presigned URL (moto does not) and injects faults.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from urllib.parse import urlsplit

import pytest

from bench.s3_server import ACCESS_KEY, REGION, SECRET_KEY
from mpack.format.reader import iter_mpack
from mpack.hub import gc
from mpack.hub.handlers import production_registry
from mpack.hub.models import BackgroundJob, FetchMPackCache, Object
from mpack.hub.pool import run_until_idle
from mpack.hub.settings import Settings
from storage import BLOBS, MPACKS, mpack_path
from storage.s3 import S3Store
from tests import database
from tests.factories import History, error_of, push_history, unpack, wire
from tests.s3_support import BucketFront, bucket_http

PATH = "/gabriel/song"


@pytest.fixture
def front(s3_endpoint):
    with BucketFront(s3_endpoint.url, SECRET_KEY) as proxy:
        yield proxy


@pytest.fixture
def settings(tmp_path, bucket, front, monkeypatch):
    """The hub's settings, as an operator writes them: the bucket by URL, keys from the AWS chain."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    home = tmp_path / "hub"
    return Settings.from_env({
        "MPACKHUB_HOME": str(home), "MPACKHUB_DATABASE_URL": database.database_url(home),
        "MPACKHUB_PUBLIC_URL": "http://hub.test", "MPACKHUB_JOB_THREADS": "0",
        "MPACKHUB_STORE_URL": f"s3://{bucket}/hub", "MPACKHUB_S3_ENDPOINT_URL": front.url,
        "MPACKHUB_S3_REGION": REGION,
    })


@pytest.fixture
def pushed(app, owner, repo) -> History:
    history = History().linear(4)
    push_history(app, owner[1], PATH, history)
    return history



def fetch_mpack(app, tip: str, status: int = 200):
    return app.post_json(f"{PATH}/fetch/mpack", {"want": [tip], "have": []}, status=status, expect_errors=True)


def bucket_keys(s3_client, bucket: str, namespace: str) -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"hub/{namespace}/")
    return [o["Key"].rsplit("/", 1)[1] for o in listing.get("Contents", [])]


def test_store_url_selects_the_s3_store(hub, bucket):
    assert isinstance(hub.store, S3Store)
    assert (hub.store.bucket, hub.store.prefix) == (bucket, "hub/")
    assert not (hub.settings.home / "store").exists()


def test_healthz_reports_whether_the_bucket_answers(hub, app, front, clock):
    assert app.get("/healthz").json["store_writable"] is True
    front.fail(503)
    clock.advance(hub.settings.health_probe_seconds)  # the last probe's answer has expired
    assert app.get("/healthz", expect_errors=True).json["store_writable"] is False


def test_a_clone_downloads_the_pack_from_the_bucket_not_the_hub(app, pushed, front):
    answer = fetch_mpack(app, pushed.tip).json
    url = answer["mpack_url"]
    assert url.startswith(front.url + "/") and "X-Amz-Signature=" in url
    status, data = bucket_http(url)
    assert status == 200
    assert "sha256:" + hashlib.sha256(data).hexdigest() == answer["mpack_id"]
    assert len([r for r in iter_mpack(io.BytesIO(data))]) > 0
    assert front.presigned_seen[-1] == ("GET", urlsplit(url).path, None)  # SigV4 checked
    again = fetch_mpack(app, pushed.tip).json
    assert again["cached"] is True and again["mpack_id"] == answer["mpack_id"]
    assert bucket_http(again["mpack_url"])[0] == 200


def test_bucket_urls_answered_are_counted_as_the_hub_never_sees_their_downloads(hub, app, pushed):
    fetch_mpack(app, pushed.tip)  # built
    fetch_mpack(app, pushed.tip)  # hit
    fetch_mpack(app, "main")  # hit by branch
    wire(app, "POST", f"{PATH}/fetch/mpack", {"want": ["sha256:" + "0" * 64]}, status=404)
    sample = hub.metrics.registry.get_sample_value
    assert sample("mpackhub_bucket_download_urls_total") == 3
    assert sample("mpackhub_downloads_total", {"kind": "full"}) is None


def test_a_tampered_bucket_url_is_refused(app, pushed):
    url = fetch_mpack(app, pushed.tip).json["mpack_url"]
    assert bucket_http(url.replace("X-Amz-Expires=", "X-Amz-Expires=9"))[0] == 403


# -- faults: a clear 503, a retried job, never a row naming a half-written pack --------

@pytest.mark.parametrize("status", [500, 503])
def test_a_failing_bucket_answers_503_and_leaves_no_row_and_no_pack(app, pushed, front, s3_client, bucket, status):
    front.fail(status)
    body = error_of(fetch_mpack(app, pushed.tip, status=503), 503)
    assert body["error"] == "storage_unavailable"
    front.fail(None)
    assert FetchMPackCache.select().count() == 0
    assert bucket_keys(s3_client, bucket, "mpacks") == []
    assert fetch_mpack(app, pushed.tip).status_int == 200  # recovers with no restart


def test_a_bucket_failing_mid_upload_leaves_no_row_and_no_pack(app, pushed, front, s3_client, bucket):
    front.fail(503, when=lambda method, path: method == "PUT" and "/mpacks/" in path)  # the final write
    error_of(fetch_mpack(app, pushed.tip, status=503), 503)
    front.fail(None)
    assert FetchMPackCache.select().count() == 0
    assert bucket_keys(s3_client, bucket, "mpacks") == []
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_an_unreachable_bucket_answers_503(app, pushed, front):
    front.down()
    response = fetch_mpack(app, pushed.tip, status=503)
    assert error_of(response, 503)["error"] == "storage_unavailable"
    assert response.headers["Retry-After"]


def test_a_push_to_an_unreachable_bucket_answers_503_and_changes_nothing(app, owner, repo, front):
    history = History().linear(2)
    front.down()
    response = wire(app, "POST", f"{PATH}/push/objects", {"objects": history.bundle()["objects"]}, token=owner[1])
    assert error_of(response, 503)["error"] == "storage_unavailable"
    assert Object.select().count() == 0


def test_a_prebuild_against_a_failing_bucket_is_retried_then_succeeds(hub, app, pushed, front, clock, s3_client,
                                                                       bucket):
    front.fail(503)
    run_until_idle(hub, production_registry(), "w1")
    job = BackgroundJob.get()
    assert (job.status, job.attempt) == ("pending", 1)
    assert "StorageUnavailable" in job.last_error
    assert FetchMPackCache.select().count() == 0
    front.fail(None)
    clock.advance(3600)
    run_until_idle(hub, production_registry(), "w1")
    job = BackgroundJob.get()
    assert job.status == "done"
    row = FetchMPackCache.get()
    assert bucket_keys(s3_client, bucket, "mpacks") == [row.mpack_id.removeprefix("sha256:")]


# -- presigned uploads -------------------------------------------------------------------

def test_presign_hands_out_put_urls_for_missing_objects_and_the_push_verifies_them(app, owner, repo, front):
    history = History()
    big = history.blob(b"x" * 100_000)
    history.commit({"big.bin": history.blobs[big], "small.txt": b"small\n"})
    bundle = history.bundle()
    wanted = sorted(o["object_id"] for o in bundle["objects"])
    answer = unpack(wire(app, "POST", f"{PATH}/presign", {"object_ids": wanted, "direction": "put"},
                         token=owner[1], status=200))
    assert sorted(answer["presigned"]) == wanted and answer["inline"] == []
    for object_id, url in answer["presigned"].items():  # as the CLI: raw bytes, no auth header
        assert bucket_http(url, "PUT", history.blobs[object_id])[0] == 200
    bundle["objects"] = []
    reply = wire(app, "POST", f"{PATH}/push", {"bundle": bundle, "branch": "main", "force": False}, token=owner[1])
    assert reply.status_int == 200, reply.body
    assert sorted(o.digest for o in Object.select()) == sorted(wanted)
    assert fetch_mpack(app, history.tip).json["blob_count"] == 2


def test_a_push_refuses_an_upload_whose_bytes_do_not_match(hub, app, owner, repo):
    history = History().linear(1)
    bundle = history.bundle()
    (object_id,) = [o["object_id"] for o in bundle["objects"]]
    url = unpack(wire(app, "POST", f"{PATH}/presign", {"object_ids": [object_id]}, token=owner[1]))["presigned"][object_id]
    assert bucket_http(url, "PUT", b"not what was promised")[0] == 200
    bundle["objects"] = []
    reply = wire(app, "POST", f"{PATH}/push", {"bundle": bundle, "branch": "main", "force": False}, token=owner[1])
    assert error_of(reply, 422)["error"] == "missing_reference"
    assert Object.select().count() == 0
    assert not hub.store.exists(BLOBS, object_id)


def test_presign_answers_objects_the_repo_holds_inline(app, owner, pushed):
    held = sorted(pushed.blobs)
    answer = unpack(wire(app, "POST", f"{PATH}/presign", {"object_ids": held}, token=owner[1], status=200))
    assert answer == {"presigned": {}, "inline": held}


# -- GC ----------------------------------------------------------------------------------

def test_gc_deletes_expired_packs_from_the_bucket_in_one_batch(hub, app, owner, repo, clock, front, s3_client, bucket):
    history = History().linear(3)
    push_history(app, owner[1], PATH, history)
    for commit in history.commits:
        fetch_mpack(app, commit["commit_id"])
    assert len(bucket_keys(s3_client, bucket, "mpacks")) == 3
    clock.advance(hub.settings.cache_ttl + 3600)
    deletes = []
    front.fault = lambda method, path: deletes.append(path) if "?delete" in path else None
    report = gc.run_gc(hub)
    assert (report.cache_rows_deleted, report.mpacks_deleted) == (3, 3)
    assert bucket_keys(s3_client, bucket, "mpacks") == []
    assert len(deletes) == 1
    assert json.loads(json.dumps(report.as_dict()))["bytes_freed"] > 0
    assert bucket_keys(s3_client, bucket, "blobs") and all(hub.store.exists(BLOBS, b) for b in history.blobs)
    assert list(hub.store.iter_digests(MPACKS)) == []


def test_gc_removes_presigned_uploads_no_push_adopted_after_the_temp_grace(hub, app, owner, repo, clock):
    clock.now = time.time()  # the bucket stamps uploads with its own (real) clock
    history = History().linear(2)
    object_ids = sorted(history.blobs)
    urls = unpack(wire(app, "POST", f"{PATH}/presign", {"object_ids": object_ids}, token=owner[1]))["presigned"]
    assert bucket_http(urls[object_ids[0]], "PUT", history.blobs[object_ids[0]])[0] == 200
    assert gc.run_gc(hub).orphans_deleted == 0  # fresh: its push may be on its way
    clock.advance(gc.TEMP_GRACE + 60)
    assert gc.run_gc(hub, dry_run=True).orphans_deleted == 1 and len(list(hub.store.iter_incoming())) == 1
    assert gc.run_gc(hub).orphans_deleted == 1
    assert list(hub.store.iter_incoming()) == [] and not hub.store.exists(BLOBS, object_ids[0])


def test_gc_reads_the_packs_ages_off_the_bucket_listing_not_one_head_each(hub, app, owner, repo, front):
    history = History().linear(3)
    push_history(app, owner[1], PATH, history)
    for commit in history.commits:
        fetch_mpack(app, commit["commit_id"])
    asked = []
    front.fault = lambda method, path: asked.append((method, path))
    assert gc.run_gc(hub).mpacks_deleted == 0  # every pack is named by a live row
    assert not [path for method, path in asked if method == "HEAD" and "/mpacks/" in path]


def test_a_url_the_hub_signed_before_the_move_to_s3_still_downloads(hub, app, pushed):
    answer = fetch_mpack(app, pushed.tip).json
    url = hub.store.signer.url("GET", mpack_path(answer["mpack_id"]), 300)
    response = app.get(url.replace("http://hub.test", ""), headers={"Range": "bytes=0-3"})
    assert response.status_int == 200  # the whole pack: a bucket stream does not seek
    assert "sha256:" + hashlib.sha256(response.body).hexdigest() == answer["mpack_id"]


def test_cache_hits_do_not_ask_the_bucket_each_time(app, pushed, front):
    fetch_mpack(app, pushed.tip)
    fetch_mpack(app, pushed.tip)  # the first hit checks the pack is still stored
    asked = []
    front.fault = lambda method, path: asked.append((method, path))
    for _ in range(5):
        assert fetch_mpack(app, pushed.tip).json["cached"] is True
    assert asked == []  # one indexed lookup and one signature each (FMC_13), no bucket round trip
