"""Push throughput (issue 2): a generated history pushed to a live gunicorn hub as the Muse CLI does it, next to the disk.

The history is ``bench.synth`` (seed 1; ``--scale`` scales it, default 0.25 ≈
500 commits / 85 MB). It is pushed in pushes of up to 100 commits over HTTP
(msgpack; refs → filter-objects → push/objects in chunks of 400 → push) to
gunicorn with gunicorn.conf.py, 2 workers, job threads off so that prebuilds
do not compete with the pushes. The same blobs are also written into a fresh
``LocalStore`` (``put_many``, durable) and, as the anchor, into plain files
(open/write/fsync/close) in a fresh directory on the same disk. The three
take turns batch by batch (the anchor writes a push's blobs, the hub takes
the push, the store takes its blobs; the order rotates from round to round),
so that each meets the filesystem in the same state; the figures are sums
over a round's batches, medians over rounds (the stage table shows the median
push). Generation time is never counted.

Nothing is deleted until every round is done, and every round writes into
fresh directories (the hub of each round has its own home and store). On an
ext4 without a journal, as here, a new inode is not given a number freed in
the last 60 s (360 s if its inode-table block is still dirty): Linux's
``recently_deleted()`` in fs/ext4/ialloc.c. Creating files near thousands of
recent deletions then scans past them: 0.1 to 1.2 ms per file was measured
here, against ~0.02 ms otherwise, minutes apart in the same directory; when
the three took turns round by round, whichever wrote later paid less.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.live_hub import LiveHub, live_hub
from bench.synth import CommitStep, Synth
from bench.util import MB, Table, median, timer
from bench.wire import OBJECTS_PER_CALL, PushTimes, batches, call, push_batch
from storage.base import BLOBS
from storage.local import LocalStore
from storage.signing import UrlSigner

SEED = 1
DEFAULT_SCALE = 0.25
QUICK_SCALE = 0.05
COMMITS_PER_PUSH = 100
ROUNDS, QUICK_ROUNDS = 3, 1
PATH = "/bench/push"
TURNS = ("anchor", "push", "store")


@dataclass
class History:
    scale: float
    steps: list[CommitStep]

    @property
    def blobs(self) -> list[tuple[str, bytes]]:
        return [blob for step in self.steps for blob in step.new_blobs]

    @property
    def blob_bytes(self) -> int:
        return sum(len(data) for _, data in self.blobs)


@dataclass
class HttpRun:
    times: PushTimes
    pushes: int
    resend_seconds: float  # push/objects of every blob again, once all are stored


def resend_objects(hub: LiveHub, token: str, blobs: list[tuple[str, bytes]]) -> float:
    """push/objects of blobs the hub already holds: HTTP, msgpack and re-hashing, no disk writes."""
    objects = [{"object_id": oid, "content": data} for oid, data in blobs]
    with timer() as t:
        for start in range(0, len(objects), OBJECTS_PER_CALL):
            answer = call(hub, "POST", f"{PATH}/push/objects", {"objects": objects[start:start + OBJECTS_PER_CALL]}, token)
            if answer["stored"]:
                raise RuntimeError("a resent object was stored again")
    return t.seconds


def open_store(root: Path) -> LocalStore:
    store = LocalStore(root, UrlSigner([("k1", b"bench-signing-key-0123")], base_url="http://127.0.0.1"))
    store.create_layout()  # as the hub does when it starts, untimed there too
    return store


def store_write_seconds(store: LocalStore, blobs: list[tuple[str, bytes]]) -> float:
    """``LocalStore.put_many`` of these blobs (durable), in chunks as push/objects sends them."""
    with timer() as t:
        for start in range(0, len(blobs), OBJECTS_PER_CALL):
            store.put_many(BLOBS, blobs[start:start + OBJECTS_PER_CALL])
    return t.seconds


def plain_write_seconds(root: Path, blobs: list[tuple[str, bytes]]) -> float:
    """The anchor: each blob to its own file in ``root`` with open/write/fsync/close."""
    with timer() as t:
        for oid, data in blobs:
            with open(root / oid, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
    return t.seconds


@dataclass
class Round:
    http: HttpRun
    store_s: float = 0.0
    plain_s: float = 0.0


def one_round(workdir: Path, history: History, n: int, *, resend: bool) -> Round:
    """Anchor, push and store writes taking turns batch by batch (module docstring), in fresh directories.

    ``resend``: then send every blob again over HTTP (transport and hashing only).
    """
    result = Round(HttpRun(PushTimes(), 0, 0.0))
    plain = workdir / f"plain{n}"
    plain.mkdir(parents=True)
    store = open_store(workdir / f"store{n}")
    with live_hub(workdir / f"hub{n}", workers=2, env={"MPACKHUB_JOB_THREADS": "0"}) as hub:
        token = hub.create_user("bench")
        hub.create_repo(token, "push")
        for batch in batches(history.steps, COMMITS_PER_PUSH):
            blobs = list(batch.blobs.items())
            for turn in TURNS[n % 3:] + TURNS[:n % 3]:  # each goes first, second and third in turn
                if turn == "anchor":
                    result.plain_s += plain_write_seconds(plain, blobs)
                elif turn == "push":
                    push_batch(hub, token, PATH, batch, result.http.times)
                else:
                    result.store_s += store_write_seconds(store, blobs)
            result.http.pushes += 1
        heads = call(hub, "GET", f"{PATH}/refs", None, token)["branch_heads"]
        if heads.get("main") != history.steps[-1].commit["commit_id"]:
            raise RuntimeError(f"after the pushes main is {heads.get('main')}, not the history's tip")
        if resend:
            result.http.resend_seconds = resend_objects(hub, token, history.blobs)
    return result


def rounds_of(workdir: Path, history: History, rounds: int) -> tuple[HttpRun, float, float]:
    """``rounds`` rounds, nothing deleted until all are done → (the median push, median store seconds,
    median anchor seconds); the blobs are resent over HTTP after the first round only."""
    done = [one_round(workdir, history, n, resend=n == 0) for n in range(rounds)]
    by_total = sorted((r.http for r in done), key=lambda run: run.times.total)
    middle = by_total[len(by_total) // 2]
    middle.resend_seconds = done[0].http.resend_seconds
    return middle, median([r.store_s for r in done]), median([r.plain_s for r in done])


def stage_table(history: History, http: HttpRun) -> Table:
    times, pushes = http.times, http.pushes
    mb, commits = history.blob_bytes / MB, len(history.steps)
    title = (f"push over HTTP (the median round): {commits:,} commits, {len(history.blobs):,} blobs, {mb:,.1f} MB "
             f"(synth seed {SEED}, scale {history.scale:g}) in {pushes} pushes; rates = whole history ÷ stage time")
    table = Table("stage", "seconds", "share %", "MB/s", "commits/s", title=title)
    for stage, seconds in (("refs + filter-objects", times.negotiate), ("push/objects (blob bytes)", times.objects),
                           ("push (commits + snapshots)", times.records), ("total", times.total)):
        table.add(stage, seconds, 100 * seconds / times.total, mb / seconds, commits / seconds)
    return table


def ratio_table(history: History, http: HttpRun, store_s: float, plain_s: float, rounds: int) -> Table:
    mb, total = history.blob_bytes / MB, http.times.total
    title = f"push vs the disk: the same {mb:,.1f} MB of blobs (median of {rounds}); ratio = MB/s ÷ anchor MB/s"
    table = Table("measurement", "seconds", "MB/s", "ratio", title=title)
    table.add("plain open/write/fsync/close per blob (anchor)", plain_s, mb / plain_s, 1.0)
    table.add(f"LocalStore.put_many, durable, chunks of {OBJECTS_PER_CALL}", store_s, mb / store_s, plain_s / store_s)
    table.add("push over HTTP, end to end", total, mb / total, plain_s / total)
    table.add("push/objects again, all already stored (HTTP + msgpack + hashing)", http.resend_seconds,
              mb / http.resend_seconds, plain_s / http.resend_seconds)
    return table


@dataclass
class PushResults:
    history: History
    http: HttpRun
    store_s: float
    plain_s: float
    rounds: int

    def tables(self) -> list[Table]:
        return [stage_table(self.history, self.http),
                ratio_table(self.history, self.http, self.store_s, self.plain_s, self.rounds)]


def measure(scale: float | None = None, quick: bool = False) -> PushResults:
    history = History(scale or (QUICK_SCALE if quick else DEFAULT_SCALE), [])
    history.steps = list(Synth(SEED, history.scale))
    rounds = QUICK_ROUNDS if quick else ROUNDS
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        http, store_s, plain_s = rounds_of(Path(tmp), history, rounds)
    return PushResults(history, http, store_s, plain_s, rounds)


def run(scale: float | None = None, quick: bool = False) -> list[Table]:
    return measure(scale, quick).tables()
