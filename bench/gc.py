"""GC (issue 5): ``run_gc`` over 100,000 cache rows naming 10,000 stored packs, half of both expired, next to a plain DELETE and unlink loop.

The packs are 256-byte files created through ``LocalStore`` (fsync off, to
set up quickly); the rows are inserted with ``insert_many``. Rows 0..R/2 are
expired and name only the first half of the packs, the others live for a day
and name the second half, so one pass must delete R/2 rows and P/2 packs. The
whole hub directory (SQLite file and store) is then copied, and the anchor
runs on the copy: one ``DELETE FROM fetch_mpack_cache WHERE expires_at <= ?``
and ``os.unlink`` of the same P/2 files in a loop. ``--scale`` multiplies both
counts (default 1); ``--quick`` divides them by 10.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.util import Table, timer
from mpack.hub import auth, repos
from mpack.hub.bootstrap import build_hub
from mpack.hub.db import SQLITE_PRAGMAS
from mpack.hub.gc import GcReport, run_gc
from mpack.hub.models import FetchMPackCache, Repo
from mpack.hub.services import Hub
from mpack.hub.settings import Settings
from storage.base import MPACKS
from storage.local import LocalStore

ROWS, PACKS = 100_000, 10_000
PACK_BYTES = 256
QUICK_DIVISOR = 10
INSERT_CHUNK = 1000
SEED = 1
DB_FILE = "mpackhub.sqlite3"
DAY = 86_400.0


@dataclass(frozen=True)
class Dataset:
    rows: int
    packs: int
    expired_files: list[str]  # packs only expired rows name (GC must delete them), relative to the hub's home

    @property
    def expired_rows(self) -> int:
        return self.rows // 2


def _open(home: Path) -> Hub:
    return build_hub(Settings.for_home(home, job_threads=0))


def make_packs(hub: Hub, count: int) -> list[str]:
    """``count`` distinct 256-byte packs through the store (fsync off) → their digests."""
    rng = random.Random(SEED)
    store = LocalStore(hub.settings.store_root, hub.store.signer, fsync=False)
    digests = []
    for _ in range(count):
        data = rng.randbytes(PACK_BYTES)
        digest = hashlib.sha256(data).hexdigest()
        store.put_bytes(MPACKS, digest, data)
        digests.append(digest)
    return digests


def _row(n: int, repo: Repo, mpack_id: str, expires_at: float, now: float) -> dict:
    return {
        "cache_id": hashlib.sha256(f"row {n}".encode()).hexdigest(), "repo": repo.repo_id,
        "tip_commit_id": hashlib.sha256(f"tip {n}".encode()).hexdigest(), "base": "",
        "mpack_id": "sha256:" + mpack_id, "created_at": now - DAY, "expires_at": expires_at,
        "last_used_at": now - DAY, "size": PACK_BYTES, "commit_count": 1, "blob_count": 1, "hits": 0,
    }


def insert_rows(hub: Hub, repo: Repo, digests: list[str], count: int) -> None:
    """``count`` rows: the first half expired and naming the first half of ``digests``, the rest live."""
    now, half, packs = hub.now(), count // 2, len(digests) // 2
    rows = [_row(n, repo, digests[n % packs], now - 3600, now) if n < half
            else _row(n, repo, digests[packs + n % (len(digests) - packs)], now + DAY, now)
            for n in range(count)]
    with hub.db.atomic():
        for start in range(0, count, INSERT_CHUNK):
            FetchMPackCache.insert_many(rows[start:start + INSERT_CHUNK]).execute()


def build_dataset(home: Path, rows: int, packs: int) -> Dataset:
    hub = _open(home)
    try:
        owner, _ = auth.create_user(hub, "bench")
        repo = repos.create_repo(hub, owner, "gc")
        digests = make_packs(hub, packs)
        insert_rows(hub, repo, digests, rows)
        files = [os.path.relpath(hub.store.local_path(MPACKS, d), home) for d in digests[:packs // 2]]
    finally:
        hub.db.close()
    return Dataset(rows, packs, files)


def time_gc(home: Path) -> tuple[float, GcReport]:
    hub = _open(home)
    try:
        with timer() as t:
            report = run_gc(hub)
    finally:
        hub.db.close()
    return t.seconds, report


def time_anchor(home: Path, dataset: Dataset) -> float:
    """Plain: one DELETE of the expired rows, then os.unlink of the packs they named."""
    paths = [home / name for name in dataset.expired_files]
    conn = sqlite3.connect(home / DB_FILE, isolation_level=None)
    for name, value in SQLITE_PRAGMAS.items():
        conn.execute(f"PRAGMA {name} = {value}")
    try:
        with timer() as t:
            conn.execute("BEGIN IMMEDIATE")
            deleted = conn.execute("DELETE FROM fetch_mpack_cache WHERE expires_at <= ?", (time.time(),)).rowcount
            conn.execute("COMMIT")
            for path in paths:
                os.unlink(path)
    finally:
        conn.close()
    if deleted != dataset.expired_rows:
        raise RuntimeError(f"the anchor deleted {deleted} rows, expected {dataset.expired_rows}")
    return t.seconds


def check(report: GcReport, dataset: Dataset) -> None:
    if (report.cache_rows_deleted, report.mpacks_deleted) != (dataset.expired_rows, len(dataset.expired_files)):
        raise RuntimeError(f"run_gc deleted {report.cache_rows_deleted} rows and {report.mpacks_deleted} packs, "
                           f"expected {dataset.expired_rows} and {len(dataset.expired_files)}")


def gc_table(dataset: Dataset, gc_s: float, anchor_s: float) -> Table:
    title = (f"GC: {dataset.rows:,} cache rows, {dataset.packs:,} packs of {PACK_BYTES} B, half of each expired; "
             f"ratio = rows/s ÷ anchor rows/s")
    table = Table("measurement", "rows deleted", "packs deleted", "seconds", "rows/s", "ratio", title=title)
    rows, packs = dataset.expired_rows, len(dataset.expired_files)
    table.add("plain DELETE … WHERE expires_at <= ? + os.unlink loop (anchor)", rows, packs, anchor_s,
              rows / anchor_s, 1.0)
    table.add("run_gc (expire, delete packs, sweep orphans, prune jobs)", rows, packs, gc_s, rows / gc_s,
              anchor_s / gc_s)
    return table


def run(scale: float | None, quick: bool) -> list[Table]:
    factor = (scale or 1.0) / (QUICK_DIVISOR if quick else 1)
    rows, packs = max(4, round(ROWS * factor)), max(2, round(PACKS * factor))
    with tempfile.TemporaryDirectory(prefix="bench-gc-") as tmp:
        hub_home, anchor_home = Path(tmp) / "hub", Path(tmp) / "anchor"
        dataset = build_dataset(hub_home, rows, packs)
        shutil.copytree(hub_home, anchor_home)
        anchor_s = time_anchor(anchor_home, dataset)
        gc_s, report = time_gc(hub_home)
    check(report, dataset)
    return [gc_table(dataset, gc_s, anchor_s)]
