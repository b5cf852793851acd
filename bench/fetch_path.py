"""Issue 3: the mpack fetch path — cold builds, memory, clones and incremental fetches.

One run builds a seeded synthetic history (``bench.synth``; scale 1 ≈ 2,000
commits, 5,150 blobs, 347 MB) and one at 4× that scale, then reports:
- cold build time and MB/s of blob content, next to hashlib sha256 over the
  same blob bytes (ratio);
- peak RSS of the process building the pack, for 1× and 4× (flat, < 100 MB);
- wall time of ``mpackhub clone`` from a real gunicorn on a cache hit, next to
  ``git clone`` over smart HTTP (nginx + fcgiwrap + git http-backend) of the
  same content imported into git (ratio);
- server time of an incremental fetch of one new commit, on 1× and 4×.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.gitserver import GitSmartHttp, git_http_missing
from bench.live_hub import live_hub
from bench.seed_hub import populate, push_batch
from bench.synth import Synth
from bench.synth_export import make_git_repo
from bench.util import MB, Table, hashlib_sha256_mbps, measure, median, timer
from mpack.format import ids
from mpack.hub import fetch
from mpack.hub.bootstrap import build_hub
from mpack.hub.models import BackgroundJob, Commit, FetchMPackCache, Object, Repo, Snapshot
from mpack.hub.services import Hub
from mpack.hub.settings import Settings
from storage.base import BLOBS

REPO = "reference"
CLONE_RUNS = 3


def open_hub(home: Path) -> Hub:
    return build_hub(Settings.for_home(home, public_url="http://127.0.0.1", job_threads=0))


def prepare(home: Path, scale: float) -> tuple[Synth, list[str]]:
    synth = Synth(seed=1, scale=scale)
    hub = open_hub(home)
    _, tips = populate(hub, synth, REPO)
    # The pushes queued a prebuild asking for a delta from every earlier tip to the head (one per batch:
    # ~N/2 histories of packs). The live hub of the clone timings would build them meanwhile: drop them.
    BackgroundJob.delete().execute()
    hub.db.close()
    return synth, tips


def cold_build(home: str, tip: str) -> tuple[float, int, int]:
    """In a child process: build the tip's pack from scratch → (seconds, pack bytes, blob bytes)."""
    hub = open_hub(Path(home))
    repo = Repo.get(Repo.name == REPO)
    FetchMPackCache.delete().where(FetchMPackCache.repo == repo).execute()
    with timer() as t:
        answer = fetch.wire_fetch_mpack(hub, repo, want=[tip], have=[])
    blob_bytes = sum(o.size for o in Object.select(Object.size).where(Object.repo == repo))
    return t.seconds, answer["size_bytes"], blob_bytes


def blob_paths(home: Path) -> list[str]:
    hub = open_hub(home)
    return [hub.store.local_path(BLOBS, o.digest) for o in Object.select(Object.digest)]


def incremental(home: Path, tip: str) -> tuple[float, float]:
    """Push one commit on ``tip``; server time of fetching it with have=[tip] → (cold s, cached s)."""
    hub = open_hub(home)
    repo = Repo.get(Repo.name == REPO)
    content = b"one more line\n"
    object_id = ids.object_digest(content)
    # A real commit: the tip's tree plus one file (not a tree of one file, which deletes every other path).
    tip_snapshot = Commit.get((Commit.repo == repo) & (Commit.digest == ids.hex_of(tip))).snapshot
    manifest = {**Snapshot.get((Snapshot.repo == repo) & (Snapshot.digest == tip_snapshot)).record["manifest"],
                "new.txt": object_id}
    snapshot = {"snapshot_id": ids.snapshot_digest(manifest), "manifest": manifest,
                "created_at": "2026-11-24T00:00:00+00:00"}
    message, when = "one more commit", "2026-11-24T00:00:01.000001+00:00"
    commit = {"commit_id": ids.commit_digest([tip], snapshot["snapshot_id"], message, when), "repo_id": "bench",
              "branch": "main", "snapshot_id": snapshot["snapshot_id"], "message": message, "committed_at": when,
              "parent_commit_id": tip, "parent2_commit_id": None, "author": "bench", "metadata": {}}
    hub.store.put_bytes(BLOBS, object_id, content)
    Object.insert(repo=repo, digest=object_id, size=len(content)).on_conflict_ignore().execute()
    push_batch(hub, repo, [commit], [snapshot])
    with timer() as cold:
        fetch.wire_fetch_mpack(hub, repo, want=[commit["commit_id"]], have=[tip])
    hits = []
    for _ in range(5):
        with timer() as hit:
            fetch.wire_fetch_mpack(hub, repo, want=[commit["commit_id"]], have=[tip])
        hits.append(hit.seconds)
    return cold.seconds, median(hits)


def clone_times(home: Path, synth: Synth, work: Path) -> tuple[float, float | None]:
    """Median wall time of ``mpackhub clone`` (cache hit) and of ``git clone`` over smart HTTP."""
    with live_hub(home, workers=2) as server:
        url = f"{server.url}/bench/{REPO}"
        ours = [_timed_clone([sys.executable, "-m", "mpack.cli", "clone", url], work / f"ours{n}")
                for n in range(CLONE_RUNS)]
    if git_http_missing():
        return median(ours), None
    make_git_repo(synth, work / "git" / "ref.git")
    with GitSmartHttp(work / "git") as git:
        theirs = [_timed_clone(["git", "clone", "-q", git.repo_url("ref.git")], work / f"git{n}")
                  for n in range(CLONE_RUNS)]
    return median(ours), median(theirs)


def _timed_clone(command: list[str], target: Path) -> float:
    seconds = measure([*command, str(target)], stdout=subprocess.DEVNULL).seconds
    shutil.rmtree(target, ignore_errors=True)
    return seconds


def sha256_of(home: str) -> float:
    """In a child process, like the builds: hashlib sha256 MB/s over the repo's blob files."""
    return hashlib_sha256_mbps(blob_paths(Path(home)))


def run(scale: float | None = None, quick: bool = False) -> list[Table]:
    scale = scale or (0.05 if quick else 1.0)
    with tempfile.TemporaryDirectory(prefix="mpackhub-fetch-bench-") as tmp:
        work = Path(tmp)
        build = Table("measurement", "blob MB", "pack MB", "seconds", "MB/s", "ratio", "peak RSS MiB",
                      title=f"cold mpack build vs hashlib sha256 (seed 1, scale {scale} and {4 * scale})")
        incremental_table = Table("repo", "commits", "incremental fetch, cold ms", "incremental fetch, cached ms",
                                  title="server time of fetching one new commit (want=[new], have=[old tip])")
        homes = {}
        for label, factor in (("1×", 1), ("4×", 4)):
            home = work / f"hub{factor}"
            synth, tips = prepare(home, scale * factor)
            homes[factor] = (home, synth)
            measured = measure(cold_build, str(home), tips[-1])
            seconds, pack_bytes, blob_bytes = measured.value
            if factor == 1:
                anchor = measure(sha256_of, str(home))
                sha = anchor.value
                build.add("hashlib sha256 over the blob bytes (anchor)", blob_bytes / MB, blob_bytes / MB,
                          blob_bytes / MB / sha, sha, 1.0, anchor.peak_rss_mb)
            rate = blob_bytes / MB / seconds
            build.add(f"cold build, {label} ({synth.counts['commits']} commits)", blob_bytes / MB, pack_bytes / MB,
                      seconds, rate, rate / sha, measured.peak_rss_mb)
            cold, hit = incremental(home, tips[-1])
            incremental_table.add(label, synth.counts["commits"] + 1, cold * 1000, hit * 1000)
        home, synth = homes[1]
        ours, theirs = clone_times(home, synth, work)
        if theirs is None:
            clone = Table("measurement", "median s", title="clone wall time (git anchor skipped: nginx/fcgiwrap missing)")
            clone.add("mpackhub clone (signed URL, cache hit)", ours)
        else:
            clone = Table("measurement", "median s", "ratio", title="clone wall time of the 1× repo, with checkout")
            clone.add("git clone over smart HTTP, nginx + git http-backend (anchor)", theirs, 1.0)
            clone.add("mpackhub clone (signed URL, cache hit)", ours, ours / theirs)
        return [build, incremental_table, clone]
