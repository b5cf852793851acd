"""Several nodes: two real gunicorn hubs sharing one PostgreSQL database, one bucket, keys and admin token.

Each node has its own ``MPACKHUB_HOME`` (so no lock file or local file is
shared); what they share is what a scaled-out deployment shares. The bucket
is moto's server behind ``BucketFront`` (which checks presigned URLs' SigV4
signatures); the database a throwaway PostgreSQL cluster (bench/postgres.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.request
from contextlib import ExitStack

import psycopg2
import pytest

from bench.live_hub import live_hub, push_like_cli
from bench.postgres import PostgresUnavailable, find_bin_dir, throwaway_postgres
from bench.s3_server import SECRET_KEY, create_bucket
from mpack.client import sync
from mpack.client.hub_client import HubClient
from mpack.client.layout import MuseRepo
from tests import database
from tests.factories import History
from tests.jobs_support import wait_until
from tests.s3_support import BucketFront

# The nodes always run on their own PostgreSQL cluster: the PostgreSQL pass of the suite would repeat them.
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(database.POSTGRES, reason="already on PostgreSQL in the SQLite pass")]


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    try:
        find_bin_dir()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    with throwaway_postgres(tmp_path_factory.mktemp("pg")) as url:
        yield url


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, s3_endpoint, database):
    """Nodes A and B: same database, bucket, signing keys and admin token; their own homes."""
    bucket = create_bucket(s3_endpoint)
    shared = {
        **s3_endpoint.env(bucket, "hub"), "MPACKHUB_DATABASE_URL": database,
        "MPACKHUB_ADMIN_TOKEN": "nodes-admin-" + os.urandom(8).hex(),
        "MPACKHUB_SIGNING_KEYS": "k1:" + os.urandom(16).hex(), "MPACKHUB_JOB_THREADS": "2",
    }
    with ExitStack() as stack:
        front = stack.enter_context(BucketFront(s3_endpoint.url, SECRET_KEY))
        shared["MPACKHUB_S3_ENDPOINT_URL"] = front.url
        a = stack.enter_context(live_hub(tmp_path_factory.mktemp("node-a") / "home", workers=2, env=shared))
        b = stack.enter_context(live_hub(tmp_path_factory.mktemp("node-b") / "home", workers=2, env=shared))
        yield a, b, front, database, bucket


def jobs_of(database: str, repo_id: str) -> list[tuple[str, str, int]]:
    with psycopg2.connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT job_type, status, attempt FROM background_job WHERE repo_id = %s", (repo_id,))
        return cursor.fetchall()


def expire_cache_rows(database: str, repo_id: str) -> None:
    with psycopg2.connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("UPDATE fetch_mpack_cache SET expires_at = 0 WHERE repo_id = %s", (repo_id,))


def builds_logged(nodes, mpack_id: str) -> int:
    count = 0
    for node in nodes:
        for line in node.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"mpack built"' in line and json.loads(line).get("mpack_id") == mpack_id:
                count += 1
    return count


def stored(s3_client, bucket: str, mpack_id: str) -> bool:
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix="hub/mpacks/" + mpack_id.removeprefix("sha256:"))
    return listing.get("KeyCount", 0) > 0


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def push_through_presigned_urls(node, token: str, path: str, history: History) -> None:
    """The Muse CLI's push with large objects: presign → PUT each to the bucket, no auth → push."""
    bundle = history.bundle()
    wanted = sorted(o["object_id"] for o in bundle["objects"])
    presigned = node.call("POST", f"{path}/presign", {"object_ids": wanted, "direction": "put"}, token=token).data()
    assert sorted(presigned["presigned"]) == wanted
    for object_id, url in presigned["presigned"].items():
        request = urllib.request.Request(url, method="PUT", data=history.blobs[object_id],
                                         headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    bundle["objects"] = []
    reply = node.call("POST", f"{path}/push", {"bundle": bundle, "branch": "main", "force": False}, token=token)
    assert reply.status == 200, reply.body


def test_a_push_on_one_node_is_cloned_from_the_other_through_the_bucket(nodes, tmp_path):
    a, b, front, database, _ = nodes
    token = a.create_user("ada")
    repo_id = a.create_repo(token, "opus")["repo_id"]
    history = History()
    history.commit({"score.mid": os.urandom(300_000), "notes.txt": b"large objects go straight to the bucket\n"})
    push_through_presigned_urls(a, token, "/ada/opus", history)
    assert wait_until(lambda: jobs_of(database, repo_id) == [("fetch.mpack.prebuild", "done", 1)], timeout=30)
    history.linear(11)
    push_like_cli(a, token, "/ada/opus", history, history.commits[1:])

    # One prebuild job per push, each run by whichever node claimed it.
    done = [("fetch.mpack.prebuild", "done", 1)] * 2
    assert wait_until(lambda: jobs_of(database, repo_id) == done, timeout=30), jobs_of(database, repo_id)

    seen = len(front.presigned_seen)
    cloned = sync.clone(f"{b.url}/ada/opus", tmp_path / "opus", HubClient(f"{b.url}/ada/opus"))
    assert cloned is not None
    repo = MuseRepo(tmp_path / "opus")
    assert repo.branch_head("main") == history.tip
    assert all(repo.read_object(o) == data for o, data in history.blobs.items())
    # The pack came from the bucket through a presigned URL whose SigV4 signature was checked.
    assert [(m, refusal) for m, _, refusal in front.presigned_seen[seen:]] == [("GET", None)]
    assert [(m, refusal) for m, _, refusal in front.presigned_seen[:2]] == [("PUT", None)] * 2  # the uploads


def test_concurrent_identical_misses_on_both_nodes_build_once(nodes):
    a, b, _, _, _ = nodes
    token = a.create_user("bea")
    a.create_repo(token, "duo")
    history = History().linear(10)
    push_like_cli(a, token, "/bea/duo", history, history.commits)
    older = history.commits[4]["commit_id"]  # no prebuild makes this one: only the tip is prebuilt
    start = threading.Barrier(8)
    answers: list = []

    def ask(node):
        start.wait()
        answers.append(node.call("POST", "/bea/duo/fetch/mpack", {"want": [older], "have": []}, as_json=True))

    threads = [threading.Thread(target=ask, args=(node,)) for node in (a, b) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [reply.status for reply in answers] == [200] * 8
    mpack_ids = {reply.data()["mpack_id"] for reply in answers}
    assert len(mpack_ids) == 1
    assert builds_logged((a, b), mpack_ids.pop()) == 1


def test_gc_on_one_node_is_safe_against_fetches_on_the_other(nodes, s3_client):
    a, b, _, database, bucket = nodes
    token = a.create_user("cleo")
    repo_id = a.create_repo(token, "gc")["repo_id"]
    history = History().linear(5)
    history.commit({"gc.txt": b"a pack no other test's repo names\n"})  # else another repo's row keeps it
    push_like_cli(a, token, "/cleo/gc", history, history.commits)
    stop = threading.Event()
    gc_reports: list[dict] = []

    def collect():  # node A collects garbage as fast as it can
        while not stop.is_set():
            reply = a.call("POST", "/admin/gc", {}, token=a.admin_token, as_json=True)
            gc_reports.append(reply.data() if reply.status == 200 else {"status": reply.status, "body": reply.body})

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        deadline = time.monotonic() + 90
        packs = []
        for round_ in range(12):
            expire_cache_rows(database, repo_id)  # every row is now GC's to take, with its pack
            if round_ % 2 and packs:  # every other round, let A's GC take the pack before B asks again
                assert wait_until(lambda: not stored(s3_client, bucket, packs[-1]), timeout=20), gc_reports[-3:]
            reply = b.call("POST", "/cleo/gc/fetch/mpack", {"want": [history.tip], "have": []}, as_json=True)
            assert reply.status == 200, reply.body
            answer = reply.data()
            data = download(answer["mpack_url"])  # node B's URL stays good whatever A's GC does
            assert "sha256:" + hashlib.sha256(data).hexdigest() == answer["mpack_id"]
            packs.append(answer["mpack_id"])
            assert time.monotonic() < deadline
    finally:
        stop.set()
        collector.join()
    assert [r for r in gc_reports if "status" in r] == []
    assert sum(r["mpacks_deleted"] for r in gc_reports) >= 1  # GC did take expired packs meanwhile
