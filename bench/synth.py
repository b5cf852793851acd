"""A seeded, reproducible synthetic Muse history: the benchmarks' reference repository.

One seed and one scale give one history, byte for byte, on any machine with
Python 3.11+ (everything is drawn from one ``random.Random(seed)`` and a
splitmix64 line hash, both stable across versions). At ``scale=1`` it is the
reference repository of shared/BENCHMARKS.md: 2,000 commits on ``main``,
~5,100 distinct blobs, ~340 MB of blob content (~4,950 text-like blobs of
1–20 KB across ~1,440 paths, ~200 random binary blobs of 100 KB–2 MB across
~65 paths), a few files touched per commit, a few deletions. ``scale``
multiplies every count (commits, blobs, paths); blob sizes do not scale, so
``scale=0.01`` is 20 commits and ~3 MB, fast enough for unit tests.

Text files are pseudo source (``.py``), prose (``.md``) and tables (``.csv``)
built from a word list. A file is a list of 64-bit line seeds; a new version
edits a few hunks (replace / insert / delete lines) of the previous one, so
successive versions are similar, as in a real repository (git can delta
them). Binary files are rewritten with fresh random bytes on every change.

Memory: the generator keeps the current manifest (path -> id), each text
path's line seeds (a few KB per path) and the set of blob ids seen; never
blob bytes beyond those of the commit being produced.

Use it as a library::

    synth = Synth(seed=1, scale=1.0)
    for step in synth:                 # CommitStep, parents first
        for oid, data in step.new_blobs:
            ...
        step.snapshot, step.commit

    for item in generate(seed=1, scale=1.0):   # flat, dependency order
        ...  # (oid, bytes) tuples, then the snapshot dict, then the commit dict

or from the shell::

    python -m bench.synth --scale 1 --out DIR          # Muse layout in DIR/.muse
    python -m bench.synth --scale 1 --git DIR.git      # bare git repo (needs git)
    python -m bench.synth --scale 1 --fast-import -    # git fast-import stream

Iterating a ``Synth`` twice gives the same history (each iteration reseeds),
so one object can feed both the Muse writer and the git writer.

``make_git_repo`` and ``write_git_fast_import`` describe the same content to
git: same paths, blobs, messages, authors and dates (git keeps whole seconds;
``committed_at`` keeps microseconds). They need the ``git`` executable
(Debian package ``git``) only for ``make_git_repo``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mpack.ids import commit_digest, object_digest, snapshot_digest

__all__ = [
    "CommitStep",
    "Stats",
    "Synth",
    "generate",
    "make_git_repo",
    "write_git_fast_import",
    "write_muse_repo",
]

KIB = 1024
MIB = 1024 * 1024

# -- reference sizes at scale 1 ---------------------------------------------------
COMMITS = 2000
TEXT_BLOBS = 4950
TEXT_PATHS = 1435
BINARY_BLOBS = 200
BINARY_PATHS = 65
DELETES = 30
TEXT_MIN, TEXT_MAX = 1 * KIB, 20 * KIB          # target characters of a text file
BINARY_MIN, BINARY_MAX = 100 * KIB, 2 * MIB     # bytes of a binary file
# size = MIN + (MAX - MIN) * u ** BINARY_SKEW: mean ~1.48 MB, so ~340 MB in all
BINARY_SKEW = 0.45
START = _dt.datetime(2023, 1, 2, 9, 0, 0, tzinfo=_dt.UTC)

MASK64 = (1 << 64) - 1

WORDS = ["able", "about", "above", "access", "account", "across", "action", "active", "actor", "adapter", "address", "after", "again", "agent", "align", "alpha", "amount", "anchor", "angle", "answer", "apply", "archive", "area", "array", "arrow", "asset", "async", "atlas", "audio", "author", "auto", "average", "axis", "backend", "badge", "balance", "band", "base", "batch", "beam", "before", "begin", "below", "best", "beta", "binary", "bind", "bit", "block", "blue", "board", "body", "bold", "bond", "book", "boot", "border", "bottom", "bound", "box", "branch", "bridge", "brief", "buffer", "build", "bundle", "button", "byte", "cache", "call", "canvas", "capture", "card", "carry", "case", "cast", "catalog", "cell", "center", "chain", "change", "channel", "chapter", "chart", "check", "child", "chord", "chunk", "circle", "claim", "class", "clean", "clear", "client", "clock", "clone", "close", "cloud", "cluster", "code", "color", "column", "commit", "common", "compact", "config", "connect", "context", "copy", "core", "corner", "count", "cover", "create", "cursor", "curve", "cycle", "daemon", "data", "date", "debug", "decode", "default", "delay", "delta", "depth", "design", "detail", "device", "digest", "direct", "domain", "double", "draft", "drain", "draw", "drive", "drop", "dynamic", "early", "edge", "editor", "effect", "element", "empty", "encode", "engine", "entry", "error", "event", "exact", "export", "extent", "factor", "fallback", "feature", "fetch", "field", "figure", "file", "filter", "final", "first", "flag", "flat", "float", "flow", "focus", "folder", "format", "frame", "fresh", "front", "future", "gain", "gate", "general", "global", "graph", "green", "grid", "group", "guard", "handle", "harbor", "hash", "header", "heap", "height", "helper", "history", "hold", "hook", "host", "hour", "index", "inner", "input", "insert", "install", "interval", "item", "join", "journal", "key", "kind", "label", "large", "last", "layer", "layout", "lead", "leaf", "level", "light", "limit", "line", "link", "list", "load", "local", "lock", "logic", "loop", "lower", "machine", "major", "manual", "map", "margin", "mark", "match", "matrix", "measure", "media", "memory", "merge", "message", "meter", "method", "middle", "minor", "mirror", "mode", "model", "module", "motion", "native", "network", "next", "node", "noise", "normal", "note", "number", "object", "offset", "open", "option", "order", "origin", "outer", "output", "owner", "packet", "page", "pair", "panel", "parent", "parse", "part", "patch", "path", "pattern", "peak", "phase", "pitch", "pixel", "plain", "plan", "point", "policy", "pool", "port", "post", "power", "prefix", "press", "primary", "probe", "process", "profile", "project", "prompt", "proxy", "pulse", "query", "queue", "quick", "random", "range", "rate", "reader", "record", "region", "release", "remote", "render", "report", "request", "reset", "result", "review", "rhythm", "root", "round", "route", "rule", "sample", "scale", "scene", "schema", "scope", "score", "screen", "search", "second", "section", "segment", "select", "sender", "series", "server", "session", "shadow", "shape", "share", "shift", "signal", "simple", "size", "slice", "slot", "small", "socket", "source", "space", "span", "spec", "split", "stack", "stage", "state", "static", "status", "step", "store", "stream", "string", "style", "subject", "summary", "switch", "symbol", "sync", "table", "tag", "target", "task", "tempo", "tensor", "term", "test", "text", "theme", "thread", "tile", "timer", "token", "tone", "topic", "total", "trace", "track", "train", "tree", "trigger", "tune", "type", "union", "unit", "update", "upper", "usage", "user", "value", "vector", "verse", "view", "voice", "volume", "watch", "weight", "while", "width", "window", "worker", "write", "yield", "zone", "café", "naïve", "über", "façade"]
_NW = len(WORDS)
AUTHORS = (
    "Ada Lovelace <ada@example.org>",
    "Grace Hopper <grace@example.org>",
    "Alan Turing <alan@example.org>",
    "Zoë Ångström <zoe@example.org>",
    "Ken Thompson <ken@example.org>",
    "Barbara Liskov <barbara@example.org>",
    "Edsger Dijkstra <edsger@example.org>",
)


def _mix(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit value from any integer."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def _w(h: int, shift: int) -> str:
    return WORDS[((h >> shift) & 1023) % _NW]


# -- one line of text from one 64-bit seed ------------------------------------------

def _py_line(seed: int) -> str:
    h = _mix(seed)
    t = h & 31
    a, b, c, d = _w(h, 5), _w(h, 15), _w(h, 25), _w(h, 35)
    n = (h >> 45) & 1023
    ind = "    " * (1 + ((h >> 55) & 1))
    if t < 3:
        return ""
    if t == 3:
        return f"def {a}_{b}({c}, {d}=None):"
    if t == 4:
        return f"class {a.capitalize()}{b.capitalize()}({c.capitalize()}):"
    if t == 5:
        return f"from {a}.{b} import {c}_{d}"
    if t == 6:
        return f"import {a}"
    if t < 10:
        return f"{ind}# {a} {b} {c} {d}, see {a}_{c}()"
    if t < 13:
        return f"{ind}if {a}.{b} is not None and {c} > {n}:"
    if t < 15:
        return f"{ind}for {a} in {b}_{c}({d}):"
    if t < 18:
        return f"{ind}    return {a}_{b} + {c}[{n % 16}]"
    if t < 21:
        return f"{ind}self.{a}_{b} = {c}.get({d!r}, {n})"
    if t < 24:
        return f"{ind}{a} = {b}({c}={d}, limit={n})"
    if t < 26:
        return f'{ind}raise {a.capitalize()}Error(f"{b} {c}: {{{d}}}")'
    if t < 28:
        return f"{ind}yield {a}, {b}.{c}"
    return f"{ind}{a}.{b}_{c}({d})"


def _md_line(seed: int) -> str:
    h = _mix(seed)
    t = h & 15
    if t == 0:
        return ""
    if t == 1:
        return f"## {_w(h, 4).capitalize()} {_w(h, 14)} {_w(h, 24)}"
    h2 = _mix(h)
    words = [_w(h, s) for s in (4, 14, 24, 34, 44)] + [_w(h2, s) for s in (0, 10, 20, 30, 40, 50)]
    words = words[: 6 + (h2 >> 60)]
    if t == 2:
        return "- " + " ".join(words[:5]) + "."
    text = " ".join(words)
    return text[0].upper() + text[1:] + ("." if t & 4 else ", " + _w(h2, 54) + ".")


def _csv_line(seed: int) -> str:
    h = _mix(seed)
    return (f"{_w(h, 0)},{_w(h, 10)},{(h >> 20) & 65535},"
            f"{(h >> 36) & 4095}.{(h >> 48) & 999:03d},{_w(h, 54)}")


_RENDER = {".py": _py_line, ".md": _md_line, ".csv": _csv_line}


# -- records ---------------------------------------------------------------------

@dataclass(frozen=True)
class CommitStep:
    """One commit of the history, with what it needs that its ancestors lack.

    ``new_blobs`` holds the blobs this commit introduces (never seen before in
    the history, ids are unique within the history); ``changes`` lists the
    manifest edits against the parent: ``("M", path, object_id)`` for an added
    or modified path, ``("D", path, None)`` for a deletion.
    """

    index: int
    commit: dict
    snapshot: dict
    new_blobs: list[tuple[str, bytes]]
    changes: list[tuple[str, str, str | None]]


@dataclass
class Stats:
    """What one pass over a history produced (writers return it)."""

    commits: int = 0
    blobs: int = 0                 # distinct blobs
    blob_bytes: int = 0            # their total size
    text_blobs: int = 0
    binary_blobs: int = 0
    paths_ever: int = 0            # distinct paths that ever existed
    head_paths: int = 0            # paths in the last snapshot
    deletes: int = 0
    head_commit_id: str = ""
    head_snapshot_id: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "extra"} | self.extra


def _iso(t: _dt.datetime) -> str:
    return t.isoformat(timespec="microseconds")


class Synth:
    """A seeded history. Iterate it for ``CommitStep`` objects in commit order.

    ``counts`` holds the planned sizes (commits, text/binary blobs and paths,
    deletions). ``last_stats`` is filled at the end of each complete pass.
    """

    def __init__(self, seed: int = 1, scale: float = 1.0, *, branch: str = "main") -> None:
        if not scale > 0:
            raise ValueError("scale must be positive")
        self.seed = int(seed)
        self.scale = float(scale)
        self.branch = branch
        n_commits = max(2, round(COMMITS * scale))
        text_paths = max(3, round(TEXT_PATHS * scale))
        self.counts = {
            "commits": n_commits,
            "text_paths": text_paths,
            "text_blobs": max(n_commits - 1 + max(2, round(0.1 * text_paths)), text_paths,
                              round(TEXT_BLOBS * scale)),
            "initial_paths": max(2, round(0.1 * text_paths)),
            "binary_blobs": max(1, round(BINARY_BLOBS * scale)),
            "binary_paths": max(1, round(BINARY_PATHS * scale)),
            "deletes": max(1, round(DELETES * scale)) if n_commits >= 3 else 0,
        }
        tag = f"bench.synth/{self.seed}/{self.scale!r}".encode()
        self.repo_id = str(uuid.UUID(bytes=hashlib.sha256(tag).digest()[:16], version=4))
        self.last_stats: Stats | None = None

    def __repr__(self) -> str:
        return f"Synth(seed={self.seed}, scale={self.scale})"

    def __iter__(self) -> Iterator[CommitStep]:
        return self.steps()

    # -- the generator -------------------------------------------------------------

    def steps(self) -> Iterator[CommitStep]:
        """Yield every commit, parents first, deterministically from (seed, scale)."""
        started = time.perf_counter()
        rng = random.Random(self.seed * 1_000_003 + round(self.scale * 1e6))
        c = self.counts
        n = c["commits"]

        # Plan: how many text / binary changes and deletions each commit makes.
        text_touches = [0] * n
        text_touches[0] = c["initial_paths"]
        for i in range(1, n):
            text_touches[i] = 1
        for _ in range(c["text_blobs"] - c["initial_paths"] - (n - 1)):
            text_touches[1 + rng.randrange(n - 1)] += 1
        bin_touches = [0] * n
        for _ in range(c["binary_blobs"]):
            bin_touches[rng.randrange(n)] += 1
        deletes = [0] * n
        late = range(max(1, n // 3), n)          # once there is something to delete
        for i in rng.sample(late, min(c["deletes"], len(late))):
            deletes[i] = 1

        adds_left = c["text_paths"] - c["initial_paths"]
        touches_left = sum(text_touches) - c["initial_paths"]
        bin_adds_left = c["binary_paths"]
        bin_touches_left = c["binary_blobs"]

        manifest: dict[str, str] = {}
        lines: dict[str, array] = {}        # text path -> line seeds
        text_paths: list[str] = []          # live text paths (hot ones first-ish)
        bin_paths: list[str] = []
        all_paths: set[str] = set()
        dirs: dict[str, list[str]] = {}
        seen: set[str] = set()
        stats = Stats()
        parent: str | None = None
        now = START

        def new_dir(kind: str) -> str:
            while True:
                a, b = rng.choice(WORDS[:-4]), rng.choice(WORDS[:-4])
                d = {
                    ".py": f"src/{a}/{b}",
                    "test": f"tests/{a}",
                    ".md": f"docs/{a}",
                    ".csv": f"data/{a}_{b}",
                    "bin": f"assets/{a}",
                }[kind]
                if d not in dirs.get(kind, ()):
                    dirs.setdefault(kind, []).append(d)
                    return d

        def new_path(kind: str) -> str:
            pool = dirs.get(kind, [])
            while True:
                d = rng.choice(pool) if pool and rng.random() < 0.88 else new_dir(kind)
                a, b = rng.choice(WORDS[:-4]), rng.choice(WORDS[:-4])
                name = {
                    ".py": f"{a}_{b}.py",
                    "test": f"test_{a}_{b}.py",
                    ".md": f"{a}-{b}.md",
                    ".csv": f"{a}_{rng.randrange(100)}.csv",
                    "bin": f"{a}-{b}.{rng.choice(('bin', 'dat', 'pak'))}",
                }[kind]
                path = f"{d}/{name}"
                if path not in all_paths:
                    all_paths.add(path)
                    return path

        def render(path: str, seeds: array) -> list[str]:
            fn = _RENDER[path[path.rfind("."):]]
            return [fn(s) for s in seeds]

        def text_add() -> tuple[str, bytes]:
            r = rng.random()
            kind = ".py" if r < 0.5 else "test" if r < 0.65 else ".md" if r < 0.85 else ".csv"
            path = new_path(kind)
            fn = _RENDER[path[path.rfind("."):]]
            target = rng.randint(TEXT_MIN, TEXT_MAX)
            seeds = array("Q")
            out: list[str] = []
            size = 0
            while size < target:
                s = rng.getrandbits(64)
                line = fn(s)
                seeds.append(s)
                out.append(line)
                size += len(line) + 1
            lines[path] = seeds
            text_paths.append(path)
            return path, ("\n".join(out) + "\n").encode()

        def text_edit(path: str) -> bytes:
            seeds = lines[path]
            fn = _RENDER[path[path.rfind("."):]]
            out = render(path, seeds)
            before = "\n".join(out)
            ops = 1 + int(rng.random() ** 2 * max(1, len(seeds) // 10))
            for _ in range(ops):
                pos = rng.randrange(len(seeds) + 1)
                r = rng.random()
                if r < 0.45 or not seeds:       # replace a few lines
                    k = rng.randint(1, 3)
                    new = [rng.getrandbits(64) for _ in range(rng.randint(1, 4))]
                elif r < 0.75:                  # insert
                    k = 0
                    new = [rng.getrandbits(64) for _ in range(rng.randint(1, 5))]
                else:                           # delete
                    k = rng.randint(1, 5)
                    new = []
                seeds[pos:pos + k] = array("Q", new)
                out[pos:pos + k] = [fn(s) for s in new]
            size = sum(map(len, out)) + len(out)
            while size > TEXT_MAX and len(seeds) > 1:
                pos = rng.randrange(len(seeds))
                size -= len(out[pos]) + 1
                del seeds[pos]
                del out[pos]
            while size < TEXT_MIN or "\n".join(out) == before:
                s = rng.getrandbits(64)
                seeds.append(s)
                out.append(fn(s))
                size += len(out[-1]) + 1
            return ("\n".join(out) + "\n").encode()

        def binary_content() -> bytes:
            size = BINARY_MIN + int((BINARY_MAX - BINARY_MIN) * rng.random() ** BINARY_SKEW)
            return rng.randbytes(size)

        def put(step: dict, path: str, data: bytes, binary: bool) -> None:
            oid = object_digest(data)
            manifest[path] = oid
            step["changes"].append(("M", path, oid))
            step["touched"].add(path)
            if oid not in seen:
                seen.add(oid)
                step["new_blobs"].append((oid, data))
                stats.blob_bytes += len(data)
                if binary:
                    stats.binary_blobs += 1
                else:
                    stats.text_blobs += 1

        for i in range(n):
            cur: dict = {"changes": [], "new_blobs": [], "touched": set()}
            changes: list[tuple[str, str, str | None]] = cur["changes"]
            touched: set[str] = cur["touched"]
            added: list[str] = []
            modified: list[str] = []

            # text changes
            for _ in range(text_touches[i]):
                if i == 0:
                    add = True
                else:
                    free = len(text_paths) - len(touched & lines.keys())
                    add = adds_left > 0 and (free <= 0 or rng.random() < adds_left / touches_left)
                    touches_left -= 1
                if add:
                    path, data = text_add()
                    if i:
                        adds_left -= 1
                    added.append(path)
                    put(cur, path, data, False)
                    continue
                for _ in range(20):
                    path = text_paths[int(len(text_paths) * rng.random() ** 1.6)]
                    if path not in touched:
                        break
                else:
                    continue
                modified.append(path)
                put(cur, path, text_edit(path), False)

            # binary changes
            for _ in range(bin_touches[i]):
                free = [p for p in bin_paths if p not in touched]
                add = bin_adds_left > 0 and (not free or rng.random() < bin_adds_left / bin_touches_left)
                bin_touches_left -= 1
                if add:
                    path = new_path("bin")
                    bin_paths.append(path)
                    bin_adds_left -= 1
                    added.append(path)
                elif free:
                    path = rng.choice(free)
                    modified.append(path)
                else:
                    continue
                put(cur, path, binary_content(), True)

            # deletions
            removed: list[str] = []
            if deletes[i]:
                cands = [p for p in text_paths if p not in touched]
                if len(cands) > 1:
                    path = rng.choice(cands)
                    text_paths.remove(path)
                    del lines[path]
                    del manifest[path]
                    changes.append(("D", path, None))
                    removed.append(path)
                    stats.deletes += 1

            now = now + _dt.timedelta(seconds=rng.randint(60, 2 * 86400 // 3),
                                      microseconds=rng.randrange(1_000_000))
            committed_at = _iso(now)
            message = self._message(rng, i, added, modified, removed)
            snap = dict(manifest)
            snapshot_id = snapshot_digest(snap)
            parents = [parent] if parent else []
            commit_id = commit_digest(parents, snapshot_id, message, committed_at)
            commit = {
                "commit_id": commit_id,
                "repo_id": self.repo_id,
                "branch": self.branch,
                "snapshot_id": snapshot_id,
                "message": message,
                "committed_at": committed_at,
                "parent_commit_id": parent,
                "parent2_commit_id": None,
                "author": AUTHORS[rng.randrange(len(AUTHORS))],
                "metadata": {},
            }
            snapshot = {"snapshot_id": snapshot_id, "manifest": snap, "created_at": committed_at}
            stats.commits += 1
            stats.head_commit_id = commit_id
            stats.head_snapshot_id = snapshot_id
            parent = commit_id
            yield CommitStep(i, commit, snapshot, cur["new_blobs"], changes)

        stats.blobs = len(seen)
        stats.paths_ever = len(all_paths)
        stats.head_paths = len(manifest)
        stats.seconds = time.perf_counter() - started
        self.last_stats = stats

    @staticmethod
    def _message(rng: random.Random, i: int, added: list[str], modified: list[str],
                 removed: list[str]) -> str:
        def stem(p: str) -> str:
            name = p.rsplit("/", 1)[-1]
            return name.rsplit(".", 1)[0]

        a, b = rng.choice(WORDS), rng.choice(WORDS)
        if i == 0:
            subject = "Initial import"
        elif removed and rng.random() < 0.5:
            subject = f"Remove {stem(removed[0])}"
        elif added and (not modified or rng.random() < 0.5):
            subject = rng.choice((f"Add {stem(added[0])}", f"Add {a} {b} to {stem(added[0])}",
                                  f"Introduce {stem(added[0])}"))
        else:
            target = stem((modified or added)[0])
            subject = rng.choice((f"Fix {a} handling in {target}", f"Refactor {a} {b}",
                                  f"Update {target}", f"Tweak {a} for {b} in {target}",
                                  f"Make {target} {a}er", f"Speed up {a} {b}"))
        if len(added) + len(modified) > 3:
            subject += f" (+{len(added) + len(modified) - 1} files)"
        if rng.random() < 0.35:
            h = rng.getrandbits(64)
            body = " ".join(_md_line(h + k) for k in range(rng.randint(1, 3))).strip()
            if body:
                return f"{subject}\n\n{body}"
        return subject


def generate(seed: int, scale: float = 1.0) -> Iterator[tuple[str, bytes] | dict]:
    """Yield the history flat, in dependency order, streaming.

    Per commit, parents first: its new blobs as ``(object_id_hex, bytes)``
    tuples, then its snapshot dict (``snapshot_id``, ``manifest``,
    ``created_at``), then its commit dict (a Muse CommitDict). Tell them apart
    by type (tuple = blob) and by the ``commit_id`` key (commit vs snapshot).
    """
    for step in Synth(seed, scale):
        yield from step.new_blobs
        yield step.snapshot
        yield step.commit


# -- writers ---------------------------------------------------------------------

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
