"""Smoke tests for the benchmark fixtures: bench.synth, bench.gitserver, bench.util."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest

from bench import synth as S
from bench import synth_export as X
from bench.gitserver import GitSmartHttp, git_http_missing
from bench.util import (
    Table,
    free_port,
    hashlib_sha256_mbps,
    measure,
    median,
    peak_rss_of,
    timer,
)
from mpack.format.ids import commit_digest, is_id, object_digest, snapshot_digest

SCALE = 0.01
HAVE_GIT = shutil.which("git") is not None


@pytest.fixture(scope="module")
def steps() -> list[S.CommitStep]:
    return list(S.Synth(7, SCALE))


def test_tiny_scale_is_small(steps):
    counts = S.Synth(7, SCALE).counts
    assert len(steps) == counts["commits"] == 20
    total = sum(len(d) for s in steps for _, d in s.new_blobs)
    assert total < 10_000_000


def test_same_seed_same_history(steps):
    again = [s.commit["commit_id"] for s in S.Synth(7, SCALE)]
    assert again == [s.commit["commit_id"] for s in steps]
    other = [s.commit["commit_id"] for s in S.Synth(8, SCALE)]
    assert other != again


def test_ids_verify_and_blobs_are_never_empty(steps):
    seen: set[str] = set()
    for step in steps:
        for oid, data in step.new_blobs:
            assert data, "empty blob"
            assert is_id(oid) and len(oid) == 64
            assert object_digest(data) == oid
            assert oid not in seen, "a blob introduced twice"
            seen.add(oid)
        snap, commit = step.snapshot, step.commit
        assert snapshot_digest(snap["manifest"]) == snap["snapshot_id"]
        assert commit["snapshot_id"] == snap["snapshot_id"]
        parents = [commit["parent_commit_id"]] if commit["parent_commit_id"] else []
        assert commit_digest(parents, commit["snapshot_id"], commit["message"],
                             commit["committed_at"]) == commit["commit_id"]
        assert set(snap["manifest"].values()) <= seen, "snapshot names a blob not yet produced"
    assert any(len(d) >= S.BINARY_MIN for s in steps for _, d in s.new_blobs), "no binary blob"


def test_commit_shape_and_order(steps):
    keys = {"commit_id", "repo_id", "branch", "snapshot_id", "message", "committed_at",
            "parent_commit_id", "parent2_commit_id", "author", "metadata"}
    parent = None
    previous_time = ""
    for step in steps:
        c = step.commit
        assert set(c) == keys
        assert c["parent_commit_id"] == parent, "parents must come before children"
        assert c["parent2_commit_id"] is None and c["metadata"] == {} and c["branch"] == "main"
        assert c["committed_at"].endswith("+00:00") and len(c["committed_at"]) == 32
        assert c["committed_at"] > previous_time
        assert step.changes, "every commit changes something"
        previous_time = c["committed_at"]
        parent = c["commit_id"]
    assert any(op == "D" for s in steps for op, _, _ in s.changes), "no deletion exercised"


def test_generate_is_flat_dependency_order():
    produced_blobs: set[str] = set()
    snapshots: set[str] = set()
    commits = 0
    for item in S.generate(7, SCALE):
        if isinstance(item, tuple):
            produced_blobs.add(item[0])
        elif "commit_id" in item:
            assert item["snapshot_id"] in snapshots
            commits += 1
        else:
            assert set(item["manifest"].values()) <= produced_blobs
            snapshots.add(item["snapshot_id"])
    assert commits == 20


def test_write_muse_repo_layout(tmp_path, steps):
    stats = X.write_muse_repo(S.Synth(7, SCALE), tmp_path, checkout=True)
    muse = tmp_path / ".muse"
    head = steps[-1].commit
    assert (muse / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (muse / "refs/heads/main").read_text().strip() == head["commit_id"] == stats.head_commit_id
    repo = json.loads((muse / "repo.json").read_text())
    assert set(repo) >= {"repo_id", "schema_version", "created_at", "domain"}
    assert repo["repo_id"] == head["repo_id"]
    assert len(list((muse / "commits").glob("*.json"))) == len(steps)
    assert json.loads((muse / "commits" / f"{head['commit_id']}.json").read_text()) == head
    snap = json.loads((muse / "snapshots" / f"{head['snapshot_id']}.json").read_text())
    assert snap == steps[-1].snapshot
    for path, oid in snap["manifest"].items():
        blob = muse / "objects" / oid[:2] / oid[2:]
        assert object_digest(blob.read_bytes()) == oid
        assert (tmp_path / path).read_bytes() == blob.read_bytes()
    assert stats.blobs == len(list((muse / "objects").glob("*/*")))


def test_fast_import_stream_shape():
    buf = io.BytesIO()
    X.write_git_fast_import(S.Synth(7, SCALE), buf)
    data = buf.getvalue()
    assert data.startswith(b"feature done\n") and data.endswith(b"done\n")
    assert data.count(b"\ncommit refs/heads/main\n") + data.startswith(b"commit") == 20


@pytest.mark.skipif(not HAVE_GIT, reason="git is not installed")
def test_make_git_repo_matches(tmp_path, steps):
    repo = tmp_path / "ref.git"
    stats = X.make_git_repo(S.Synth(7, SCALE), repo)
    count = subprocess.run(["git", "rev-list", "--count", "HEAD"], cwd=repo, check=True,
                           capture_output=True, text=True).stdout.strip()
    assert int(count) == len(steps) == stats.commits
    listing = subprocess.run(["git", "ls-tree", "-r", "-z", "--name-only", "HEAD"], cwd=repo,
                             check=True, capture_output=True).stdout
    paths = {p.decode() for p in listing.split(b"\0") if p}
    assert paths == set(steps[-1].snapshot["manifest"])
    message = subprocess.run(["git", "log", "-1", "--format=%B%n%an <%ae>%n%at"], cwd=repo,
                             check=True, capture_output=True, text=True).stdout
    head = steps[-1].commit
    assert head["message"] in message and head["author"] in message
    assert list((repo / "objects/pack").glob("*.bitmap")), "repack -adfb writes a bitmap"


@pytest.mark.skipif(not HAVE_GIT or git_http_missing() is not None,
                    reason=git_http_missing() or "git is not installed")
def test_clone_through_git_smart_http(tmp_path):
    root = tmp_path / "repos"
    root.mkdir()
    X.make_git_repo(S.Synth(7, SCALE), root / "ref.git")
    with GitSmartHttp(root) as server:
        assert server.url.startswith("http://127.0.0.1:")
        subprocess.run(["git", "clone", "-q", "--no-checkout", server.repo_url("ref.git"),
                        str(tmp_path / "clone")], check=True, timeout=60)
        fcgi, nginx = server._fcgi, server._proc
    assert fcgi is not None and fcgi.poll() is not None
    assert nginx is not None and nginx.poll() is not None
    heads = [subprocess.run(["git", "rev-parse", "HEAD"], cwd=d, check=True, capture_output=True,
                            text=True).stdout for d in (root / "ref.git", tmp_path / "clone")]
    assert heads[0] == heads[1]


def test_util_helpers(capsys):
    assert median([3, 1, 2]) == 2 and median([4, 1, 2, 3]) == 2.5
    with timer() as t:
        sum(range(1000))
    assert t.seconds >= 0
    port = free_port()
    assert 0 < port < 65536
    table = Table("what", "n").add("a|b", 1.5).add("c", 1234)
    table.print()
    out = capsys.readouterr().out
    assert "| what" in out and "a\\|b" in out and "1,234" in out
    assert hashlib_sha256_mbps([b"x" * 2_000_000]) > 0


def test_peak_rss_measures_the_child_only():
    ballast = bytearray(200_000_000)  # a big parent must not show up in a child's figure
    ballast[::4096] = bytes(len(ballast[::4096]))
    small = peak_rss_of([sys.executable, "-c", "pass"])
    assert small < 60
    big = measure([sys.executable, "-c",
                   "b = bytearray(120_000_000); b[::4096] = bytes(len(b[::4096]))"])
    assert big.value == 0 and big.seconds > 0
    assert big.peak_rss_mb > small + 90
    # an earlier big child does not leak into a later small measurement
    assert peak_rss_of([sys.executable, "-c", "pass"]) < small + 10
    # a grandchild the child waits for counts
    nested = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {big_code()!r}])"
    assert peak_rss_of([sys.executable, "-c", nested]) > small + 90
    with pytest.raises(RuntimeError):
        measure(["false"])
    assert measure("exit 3", check=False).value == 3
    del ballast


def big_code() -> str:
    return "b = bytearray(120_000_000); b[::4096] = bytes(len(b[::4096]))"


def _allocate(n: int) -> int:
    block = bytearray(n)
    block[::4096] = b"y" * len(block[::4096])
    return len(block)


def test_peak_rss_of_a_callable():
    ballast = bytearray(200_000_000)
    ballast[::4096] = bytes(len(ballast[::4096]))
    small = measure(_allocate, 1000)
    big = measure(_allocate, 100_000_000)
    assert small.value == 1000 and big.value == 100_000_000
    assert small.peak_rss_mb < 150, "the parent's ballast leaked into the child's figure"
    assert big.peak_rss_mb > small.peak_rss_mb + 80
    del ballast
