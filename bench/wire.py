"""The Muse CLI's push, client side, against a live hub; read-only peeks at the hub's database.

``push_batch`` does what the CLI does for one push: ``GET refs``, ``POST
filter-objects`` with every object the batch's snapshots name, ``POST
push/objects`` with the missing ones in chunks of 400, then ``POST push`` with
the batch's commits tip-first, their snapshots and no objects — msgpack both
ways, one connection per request. ``HubDb`` reads the hub's SQLite file with
a read-only ``sqlite3`` connection, so that watching never builds or writes
anything.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.live_hub import LiveHub
from bench.synth import CommitStep
from bench.util import timer

OBJECTS_PER_CALL = 400


@dataclass
class Batch:
    """Consecutive commits (parents first), their snapshots, and the blobs new in them."""

    commits: list[dict] = field(default_factory=list)
    snapshots: list[dict] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def tip(self) -> str:
        return self.commits[-1]["commit_id"]

    @property
    def blob_bytes(self) -> int:
        return sum(len(b) for b in self.blobs.values())


def batches(steps: Iterable[CommitStep], size: int) -> Iterator[Batch]:
    """Group a history's steps into batches of ``size`` commits."""
    batch = Batch()
    for step in steps:
        batch.commits.append(step.commit)
        batch.snapshots.append(step.snapshot)
        batch.blobs.update(step.new_blobs)
        if len(batch.commits) == size:
            yield batch
            batch = Batch()
    if batch.commits:
        yield batch


@dataclass
class PushTimes:
    """Seconds spent per kind of request, summed over pushes."""

    negotiate: float = 0.0  # refs + filter-objects
    objects: float = 0.0    # push/objects
    records: float = 0.0    # push (commits and snapshots)

    @property
    def total(self) -> float:
        return self.negotiate + self.objects + self.records


def call(hub: LiveHub, method: str, path: str, body: dict | None, token: str) -> dict:
    reply = hub.call(method, path, body, token=token)
    if reply.status != 200:
        raise RuntimeError(f"{method} {path} answered {reply.status}: {reply.body[:300]!r}")
    return reply.data()


def push_batch(hub: LiveHub, token: str, path: str, batch: Batch, times: PushTimes | None = None,
               branch: str = "main") -> dict:
    """Push one batch as the CLI does (see the module docstring) → the push's answer."""
    times = times if times is not None else PushTimes()
    with timer() as t:
        call(hub, "GET", f"{path}/refs", None, token)
        wanted = sorted({oid for s in batch.snapshots for oid in s["manifest"].values()})
        missing = call(hub, "POST", f"{path}/filter-objects", {"object_ids": wanted}, token)["missing"]
    times.negotiate += t.seconds
    with timer() as t:
        _send_objects(hub, token, path, batch, missing)
    times.objects += t.seconds
    bundle = {"commits": list(reversed(batch.commits)), "snapshots": list(reversed(batch.snapshots)), "objects": []}
    with timer() as t:
        answer = call(hub, "POST", f"{path}/push", {"bundle": bundle, "branch": branch, "force": False}, token)
    times.records += t.seconds
    return answer


def _send_objects(hub: LiveHub, token: str, path: str, batch: Batch, missing: list[str]) -> None:
    unknown = [oid for oid in missing if oid not in batch.blobs]
    if unknown:
        raise RuntimeError(f"the hub lacks {len(unknown)} objects pushed earlier, e.g. {unknown[0]}")
    objects = [{"object_id": oid, "content": batch.blobs[oid]} for oid in missing]
    for start in range(0, len(objects), OBJECTS_PER_CALL):
        call(hub, "POST", f"{path}/push/objects", {"objects": objects[start:start + OBJECTS_PER_CALL]}, token)


class HubDb:
    """Read-only queries on a hub's SQLite file (WAL: readers never block the hub's writers)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)

    def close(self) -> None:
        self.conn.close()

    def has_full_pack_row(self, repo_id: str, tip: str) -> bool:
        """Whether a cache row for (repo, tip) with base '' (a clone's pack) exists."""
        row = self.conn.execute("SELECT 1 FROM fetch_mpack_cache WHERE repo_id = ? AND tip_commit_id = ? AND base = ''",
                                (repo_id, tip)).fetchone()
        return row is not None

    def jobs_idle(self) -> bool:
        """No job pending or running."""
        row = self.conn.execute("SELECT COUNT(*) FROM background_job WHERE status IN ('pending', 'running')").fetchone()
        return row[0] == 0

    def jobs_with_status(self, status: str) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM background_job WHERE status = ?", (status,)).fetchone()[0]
