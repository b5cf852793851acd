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

    python -m bench.synth_export --scale 1 --out DIR          # Muse layout in DIR/.muse
    python -m bench.synth_export --scale 1 --git DIR.git      # bare git repo (needs git)
    python -m bench.synth_export --scale 1 --fast-import -    # git fast-import stream

Iterating a ``Synth`` twice gives the same history (each iteration reseeds),
so one object can feed both the Muse writer and the git writer.

``make_git_repo`` and ``write_git_fast_import`` describe the same content to
git: same paths, blobs, messages, authors and dates (git keeps whole seconds;
``committed_at`` keeps microseconds). They need the ``git`` executable
(Debian package ``git``) only for ``make_git_repo``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import random
import time
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.synth_text import _RENDER, AUTHORS, WORDS, _md_line
from mpack.format.ids import commit_digest, object_digest, snapshot_digest

__all__ = [
    "CommitStep",
    "Stats",
    "Synth",
    "generate",
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
