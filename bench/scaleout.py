"""Issue 11: one node on SQLite + a local store next to PostgreSQL + an S3 endpoint (and two such nodes).

One run fills each deployment with the same seeded synthetic history
(``bench.synth``, scale 0.05 ≈ 100 commits, 17 MB by default), prebuilds the
tip, starts real gunicorn hubs (2 workers each) and measures, over HTTP on
loopback:
- cache-hit ``POST fetch/mpack`` requests per second from 8 client threads
  (one new connection per request, as the Muse CLI makes them), the SQLite +
  local store node being the anchor; the two-node row splits the same load
  across two nodes sharing the database and the bucket;
- ``mpackhub clone`` wall time (median) and the pack download rate: on the
  local store the hub streams the pack through its own signed URL, on S3 the
  client fetches it from the bucket's presigned URL, bypassing the hub.
PostgreSQL is a throwaway cluster (bench/postgres.py), the bucket moto's
server (bench/s3_server.py) — a stand-in for S3 that shares this machine's
CPUs with everything else, so its figures are a floor, not a forecast.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.live_hub import LiveHub, live_hub
from bench.postgres import throwaway_postgres
from bench.s3_server import ACCESS_KEY, SECRET_KEY, create_bucket, moto_server
from bench.seed_hub import populate
from bench.synth import Synth
from bench.util import MB, Table, measure, median
from mpack.hub import fetch
from mpack.hub.bootstrap import build_hub
from mpack.hub.settings import Settings

REPO = "reference"
CLIENT_THREADS = 8


@contextmanager
def aws_keys():
    """The bench's own moto credentials for this process's S3 clients (the standard chain reads them)."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def shared_secrets() -> dict[str, str]:
    return {"MPACKHUB_ADMIN_TOKEN": "bench-admin-" + os.urandom(8).hex(),
            "MPACKHUB_SIGNING_KEYS": "k1:" + os.urandom(16).hex(), "MPACKHUB_JOB_THREADS": "0"}


def fill(home: Path, env: dict[str, str], synth: Synth) -> tuple[str, int]:
    """Push the history in-process and prebuild its tip → (tip, pack bytes)."""
    hub = build_hub(Settings.from_env({**env, "MPACKHUB_HOME": str(home), "MPACKHUB_PUBLIC_URL": "http://bench"}))
    try:
        repo, tips = populate(hub, synth, REPO)
        answer = fetch.wire_fetch_mpack(hub, repo, want=[tips[-1]], have=[])
        return tips[-1], answer["size_bytes"]
    finally:
        hub.db.close()


def hit_rate(servers: list[LiveHub], tip: str, seconds: float) -> tuple[int, float, float]:
    """Cache-hit fetch/mpack from CLIENT_THREADS threads spread over ``servers`` → (requests, elapsed s, req/s)."""
    stop = time.monotonic() + seconds
    counts = [0] * CLIENT_THREADS
    failures: list[int] = []

    def client(n: int) -> None:
        server = servers[n % len(servers)]
        while time.monotonic() < stop:
            reply = server.call("POST", f"/bench/{REPO}/fetch/mpack", {"want": [tip], "have": []}, as_json=True)
            if reply.status != 200:
                failures.append(reply.status)
                return
            counts[n] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"cache-hit requests failed: {failures[:5]}")
    return sum(counts), elapsed, sum(counts) / elapsed


def download_rate(server: LiveHub, tip: str) -> float:
    """MB/s of downloading the cached pack through the URL fetch/mpack hands out."""
    answer = server.call("POST", f"/bench/{REPO}/fetch/mpack", {"want": [tip], "have": []}, as_json=True).data()
    started = time.perf_counter()
    with urllib.request.urlopen(answer["mpack_url"], timeout=300) as response:
        size = len(response.read())
    return size / MB / (time.perf_counter() - started)


def clone_seconds(server: LiveHub, work: Path, runs: int) -> float:
    times = []
    for n in range(runs):
        target = work / f"clone{n}"
        times.append(measure([sys.executable, "-m", "mpack.cli", "clone", f"{server.url}/bench/{REPO}", str(target)],
                             stdout=subprocess.DEVNULL).seconds)
        shutil.rmtree(target, ignore_errors=True)
    return median(times)


def run(scale: float | None = None, quick: bool = False) -> list[Table]:
    scale = scale or (0.01 if quick else 0.05)
    seconds, runs = (0.5, 1) if quick else (5.0, 3)
    synth = Synth(seed=1, scale=scale)
    hits = Table("measurement", "requests", "seconds", "req/s", "ratio",
                 title=f"cache-hit POST fetch/mpack, {CLIENT_THREADS} client threads, a new connection each "
                       f"(synth seed 1, scale {scale})")
    clones = Table("measurement", "pack MB", "clone median s", "download MB/s", "ratio",
                   title=f"mpackhub clone of the tip (median of {runs}) and the pack download through its URL; "
                         "ratio = anchor clone s ÷ this clone s")
    with tempfile.TemporaryDirectory(prefix="mpackhub-scaleout-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        stack.enter_context(aws_keys())
        database = stack.enter_context(throwaway_postgres(work / "pg"))
        endpoint = stack.enter_context(moto_server(work))
        local_env = shared_secrets()
        scaled_env = {**shared_secrets(), **endpoint.env(create_bucket(endpoint)), "MPACKHUB_DATABASE_URL": database}
        local_tip, pack_bytes = fill(work / "local" / "home", local_env, synth)
        scaled_tip, _ = fill(work / "scaled-a" / "home", scaled_env, synth)
        local = stack.enter_context(live_hub(work / "local" / "home", env=local_env))
        node_a = stack.enter_context(live_hub(work / "scaled-a" / "home", env=scaled_env))
        (work / "scaled-b").mkdir()
        node_b = stack.enter_context(live_hub(work / "scaled-b" / "home", env=scaled_env))

        anchor_count, elapsed, anchor = hit_rate([local], local_tip, seconds)
        hits.add("1 node, SQLite + local store (anchor)", anchor_count, elapsed, anchor, 1.0)
        for label, servers in (("1 node, PostgreSQL + S3 endpoint", [node_a]),
                               ("2 nodes, PostgreSQL + S3 endpoint, load split", [node_a, node_b])):
            count, elapsed, rate = hit_rate(servers, scaled_tip, seconds)
            hits.add(label, count, elapsed, rate, rate / anchor)

        anchor_clone = clone_seconds(local, work, runs)
        clones.add("SQLite + local store, the hub's signed URL (anchor)", pack_bytes / MB, anchor_clone,
                   download_rate(local, local_tip), 1.0)
        scaled_clone = clone_seconds(node_b, work, runs)
        clones.add("PostgreSQL + S3 endpoint, the bucket's presigned URL", pack_bytes / MB, scaled_clone,
                   download_rate(node_b, scaled_tip), anchor_clone / scaled_clone)
    return [hits, clones]
