"""Issue 10: how a clone of every branch should ask for its packs.

A synthetic main history (``bench.synth``; scale 0.1 ≈ 200 commits, 35 MB)
plus four branches of three small commits each, forked at 50 %, 70 %, 90 %
and 100 % of main. Every branch tip has its prebuilt pack in the cache, as
after the pushes' prebuild jobs. Three ways of cloning every branch from a
real gunicorn with our client, each run twice (the first clone after the
pushes, then a second one of the same tips), timed end to end (refs, fetch
answers, downloads, verification, apply, checkout):

- **one pack per branch, whole** (anchor): every pack is a prebuilt hit, but
  each repeats the shared history;
- **one multi-want pack**: ``want`` = every tip; built on the first clone
  after any push to any branch, cached for the next one;
- **prebuilt pack + deltas** (what ``mpackhub clone`` does): the checked-out
  branch's prebuilt pack, then each other branch with the heads already
  fetched as haves (built small on the first clone, cached for the next).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bench.live_hub import live_hub
from bench.seed_hub import populate, push_batch
from bench.synth import Synth
from bench.util import MB, Table, timer
from mpack.client import sync
from mpack.client.hub_client import HubClient
from mpack.client.layout import MuseRepo
from mpack.format import ids
from mpack.hub import fetch, push, snapshots
from mpack.hub.bootstrap import build_hub
from mpack.hub.models import BackgroundJob, Commit, Repo
from mpack.hub.settings import Settings

REPO = "branches"
FORKS = (0.5, 0.7, 0.9, 1.0)
COMMITS_PER_BRANCH = 3


def _branch(hub, repo: Repo, name: str, base: str) -> str:
    """Three commits on ``base`` (one small file each) pushed as branch ``name`` → its tip."""
    row = Commit.get((Commit.repo == repo) & (Commit.digest == ids.hex_of(base)))
    manifest = dict(snapshots.record(repo.repo_id, row.snapshot)["manifest"])
    parent, commits, records = base, [], []
    for n in range(COMMITS_PER_BRANCH):
        content = f"{name} {n}\n".encode() * 40
        object_id = ids.object_digest(content)
        push.receive_objects(hub, repo, {"objects": [{"object_id": object_id, "content": content}]})
        manifest[f"{name}/part{n}.txt"] = object_id
        when = f"2026-11-25T00:00:0{n}.000001+00:00"
        snapshot = {"snapshot_id": ids.snapshot_digest(manifest), "manifest": dict(manifest), "created_at": when}
        message = f"{name} {n}"
        commit = {"commit_id": ids.commit_digest([parent], snapshot["snapshot_id"], message, when), "repo_id": "bench",
                  "branch": name, "snapshot_id": snapshot["snapshot_id"], "message": message, "committed_at": when,
                  "parent_commit_id": parent, "parent2_commit_id": None, "author": "bench", "metadata": {}}
        commits.append(commit)
        records.append(snapshot)
        parent = commit["commit_id"]
    return push_batch(hub, repo, commits, records, branch=name)


def prepare(home: Path, scale: float) -> dict[str, str]:
    """The repo with main and its branches, every tip's whole pack cached → {branch: tip}."""
    hub = build_hub(Settings.for_home(home, public_url="http://127.0.0.1", job_threads=0))
    repo, _ = populate(hub, Synth(seed=3, scale=scale), REPO)
    history = [c.commit_id for c in Commit.select(Commit.commit_id, Commit.generation)
               .where(Commit.repo == repo).order_by(Commit.generation)]
    heads = {"main": history[-1]}
    for n, at in enumerate(FORKS):
        heads[f"branch{n}"] = _branch(hub, repo, f"branch{n}", history[max(0, int(at * len(history)) - 1)])
    for tip in heads.values():  # what the prebuild jobs leave behind
        fetch.wire_fetch_mpack(hub, repo, [tip], [])
    BackgroundJob.delete().execute()  # done by hand above: no pool work during the timings
    hub.db.close()
    return heads


def _whole(client: HubClient, repo: MuseRepo, heads: dict[str, str]) -> int:
    return sum(sync.fetch_pack(client, repo, [tip], [], name)["size_bytes"] for name, tip in heads.items())


def _multi_want(client: HubClient, repo: MuseRepo, heads: dict[str, str]) -> int:
    return sync.fetch_pack(client, repo, sorted(heads.values()), [], "all")["size_bytes"]


def _prebuilt_then_deltas(client: HubClient, repo: MuseRepo, heads: dict[str, str]) -> int:
    sizes = []
    original = client.fetch_mpack

    def noting(want, have):
        answer = original(want, have)
        sizes.append(answer["size_bytes"])
        return answer

    client.fetch_mpack = noting
    sync.fetch_branches(client, repo, heads, "main")
    return sum(sizes)


STRATEGIES = (
    ("one pack per branch, whole (anchor)", _whole),
    ("one multi-want pack", _multi_want),
    ("prebuilt pack + deltas (mpackhub clone)", _prebuilt_then_deltas),
)


def _clone(url: str, work: Path, plan, heads: dict[str, str]) -> tuple[float, int]:
    target = Path(tempfile.mkdtemp(dir=work))
    with timer() as t:
        repo = MuseRepo.init(target, repo_id="bench", domain="code")
        size = plan(HubClient(url), repo, heads)
        for name, tip in heads.items():
            repo.set_branch_head(name, tip)
        repo.checkout(sync.manifest_of(repo, heads["main"]))
    shutil.rmtree(target)
    return t.seconds, size


def run(scale: float | None = None, quick: bool = False) -> list[Table]:
    scale = scale if scale is not None else (0.03 if quick else 0.1)
    table = Table("measurement", "first clone s", "second clone s", "MB downloaded", "ratio",
                  title=f"clone of main + {len(FORKS)} branches (scale {scale}), every tip prebuilt")
    anchor = None
    with tempfile.TemporaryDirectory(prefix="bench-clone-branches-") as tmp:
        work = Path(tmp)
        for label, plan in STRATEGIES:  # a fresh hub each: the first clone meets only the prebuilt packs
            home = work / f"hub-{plan.__name__}"
            heads = prepare(home, scale)
            with live_hub(home, workers=2) as server:
                url = f"{server.url}/bench/{REPO}"
                first, size = _clone(url, work, plan, heads)
                second, _ = _clone(url, work, plan, heads)
            shutil.rmtree(home)
            anchor = anchor or first
            table.add(label, first, second, size / MB, first / anchor)
    return [table]
