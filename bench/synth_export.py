"""Writing a synthetic history out: the Muse on-disk layout, a git fast-import stream, a git repo.

``python -m bench.synth_export --scale 1 --out DIR`` (see ``main``); the history
itself comes from ``bench.synth``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

from bench.synth import START, CommitStep, Stats, Synth, _iso


def _dump_json(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_muse_repo(synth: Synth, directory: str | os.PathLike, *, checkout: bool = False,
                    domain: str = "code") -> Stats:
    """Write the history as a Muse repository at ``directory`` (``directory/.muse/…``).

    Layout per shared/PROTOCOL.md: ``objects/<2>/<62>`` raw bytes,
    ``commits/<id>.json``, ``snapshots/<id>.json``, ``refs/heads/<branch>``,
    ``HEAD``, ``repo.json``, an empty ``config.toml`` (no remotes).
    ``checkout=True`` also writes the head snapshot's files into ``directory``.
    """
    root = Path(directory)
    muse = root / ".muse"
    for sub in ("objects", "commits", "snapshots", "refs/heads"):
        (muse / sub).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    last: CommitStep | None = None
    made_dirs: set[str] = set()
    for step in synth:
        for oid, data in step.new_blobs:
            if oid[:2] not in made_dirs:
                (muse / "objects" / oid[:2]).mkdir(exist_ok=True)
                made_dirs.add(oid[:2])
            (muse / "objects" / oid[:2] / oid[2:]).write_bytes(data)
        _dump_json(muse / "snapshots" / f"{step.snapshot['snapshot_id']}.json", step.snapshot)
        _dump_json(muse / "commits" / f"{step.commit['commit_id']}.json", step.commit)
        last = step
    assert last is not None
    head = last.commit
    (muse / "refs" / "heads" / synth.branch).write_text(head["commit_id"] + "\n")
    (muse / "HEAD").write_text(f"ref: refs/heads/{synth.branch}\n")
    _dump_json(muse / "repo.json", {
        "repo_id": synth.repo_id,
        "schema_version": "1",
        "created_at": synth_created_at(),
        "domain": domain,
    })
    (muse / "config.toml").write_text("# written by bench.synth; no remotes\n")
    if checkout:
        for path, oid in last.snapshot["manifest"].items():
            dest = root / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(muse / "objects" / oid[:2] / oid[2:], dest)
    stats = synth.last_stats or Stats()
    stats.seconds = time.perf_counter() - started
    return stats


def synth_created_at() -> str:
    """The creation time recorded for synthetic repositories (fixed, for reproducibility)."""
    return _iso(START)


def _git_ident(author: str, when: str) -> bytes:
    name, _, email = author.partition(" <")
    seconds = int(_dt.datetime.fromisoformat(when).timestamp())
    return f"{name} <{email.rstrip('>')}> {seconds} +0000".encode()


def write_git_fast_import(synth: Synth, stream: BinaryIO, *, ref: str | None = None) -> Stats:
    """Write a ``git fast-import`` stream of the same history to a binary ``stream``.

    Blobs come as ``blob``/``mark``/``data``, each commit on ``refs/heads/<branch>``
    with the Muse message, author (as author and committer) and date in whole
    seconds, its changes as ``M 100644 :mark path`` / ``D path`` lines. The
    stream starts with ``feature done`` and ends with ``done``, so a truncated
    stream is an error for git.
    """
    started = time.perf_counter()
    ref = ref or f"refs/heads/{synth.branch}"
    w = stream.write
    w(b"feature done\n")
    marks: dict[str, int] = {}
    next_mark = 1
    prev_mark = 0
    for step in synth:
        for oid, data in step.new_blobs:
            marks[oid] = next_mark
            w(b"blob\nmark :%d\ndata %d\n" % (next_mark, len(data)))
            w(data)
            w(b"\n")
            next_mark += 1
        c = step.commit
        ident = _git_ident(c["author"], c["committed_at"])
        msg = c["message"].encode()
        out = [b"commit %s\nmark :%d\n" % (ref.encode(), next_mark),
               b"author " + ident + b"\n", b"committer " + ident + b"\n",
               b"data %d\n" % len(msg), msg, b"\n"]
        if prev_mark:
            out.append(b"from :%d\n" % prev_mark)
        for op, path, oid in step.changes:
            if op == "M":
                out.append(b"M 100644 :%d %s\n" % (marks[oid], path.encode()))
            else:
                out.append(b"D %s\n" % path.encode())
        out.append(b"\n")
        w(b"".join(out))
        prev_mark = next_mark
        next_mark += 1
    w(b"done\n")
    stats = synth.last_stats or Stats()
    stats.seconds = time.perf_counter() - started
    return stats


def _git(*args: str, cwd: str | os.PathLike | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, check=True, **kw)


def make_git_repo(synth: Synth, directory: str | os.PathLike, *, packed: bool = True) -> Stats:
    """Build a bare git repository at ``directory`` holding the same history.

    Runs ``git init --bare``, ``git fast-import`` fed by ``write_git_fast_import``,
    then ``git repack -adfb`` (``packed=True``, the anchor's layout). With
    ``packed=False`` the fast-import pack is exploded into loose objects
    instead (the "unpacked repository" anchor). Needs git (Debian package
    ``git``) on PATH. ``stats.extra`` gets the timings of each stage and the
    repository's on-disk size.
    """
    if shutil.which("git") is None:
        raise RuntimeError("make_git_repo needs the git executable (apt-get install git)")
    repo = Path(directory)
    started = time.perf_counter()
    _git("init", "--bare", "--quiet", "--initial-branch", synth.branch, str(repo))
    _git("config", "gc.auto", "0", cwd=repo)
    _git("config", "http.receivepack", "true", cwd=repo)
    t0 = time.perf_counter()
    proc = subprocess.Popen(["git", "fast-import", "--quiet", "--done"], cwd=repo,
                            stdin=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        stats = write_git_fast_import(synth, proc.stdin)
        proc.stdin.close()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.wait() != 0:
        raise RuntimeError(f"git fast-import failed with status {proc.returncode}")
    t1 = time.perf_counter()
    pack_dir = repo / "objects" / "pack"
    if packed:
        _git("repack", "-adfb", "--quiet", cwd=repo)
    else:
        for pack in sorted(pack_dir.glob("*.pack")):
            moved = repo / pack.name
            pack.rename(moved)
            for other in pack_dir.glob(pack.stem + ".*"):
                other.unlink()
            with open(moved, "rb") as fh:
                _git("unpack-objects", "-q", cwd=repo, stdin=fh)
            moved.unlink()
    t2 = time.perf_counter()
    stats.seconds = t2 - started
    stats.extra = {
        "fast_import_seconds": round(t1 - t0, 3),
        ("repack_seconds" if packed else "unpack_seconds"): round(t2 - t1, 3),
        "git_bytes": sum(p.stat().st_size for p in repo.rglob("*") if p.is_file()),
    }
    return stats


# -- command line ----------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--out", help="write a Muse repository (DIR/.muse)")
    p.add_argument("--checkout", action="store_true", help="with --out: also write the head files")
    p.add_argument("--git", metavar="DIR", help="build a bare git repository (needs git)")
    p.add_argument("--loose", action="store_true", help="with --git: loose objects, no repack")
    p.add_argument("--fast-import", metavar="FILE", help="write a git fast-import stream ('-' = stdout)")
    args = p.parse_args(argv)
    if not (args.out or args.git or args.fast_import):
        p.error("nothing to do: give --out, --git and/or --fast-import")
    synth = Synth(args.seed, args.scale)
    report = {"seed": synth.seed, "scale": synth.scale, "repo_id": synth.repo_id}
    if args.out:
        stats = write_muse_repo(synth, args.out, checkout=args.checkout)
        report["muse"] = stats.as_dict() | {"dir": str(Path(args.out).resolve())}
    if args.git:
        stats = make_git_repo(synth, args.git, packed=not args.loose)
        report["git"] = stats.as_dict() | {"dir": str(Path(args.git).resolve())}
    if args.fast_import:
        if args.fast_import == "-":
            stats = write_git_fast_import(synth, sys.stdout.buffer)
        else:
            with open(args.fast_import, "wb") as fh:
                stats = write_git_fast_import(synth, fh)
        report["fast_import"] = stats.as_dict()
    print(json.dumps(report, indent=2), file=sys.stderr if args.fast_import == "-" else sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
