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
        walk = _Walk(self)
        for i in range(self.counts["commits"]):
            yield walk.commit(i)
        stats = walk.stats
        stats.blobs = len(walk.seen)
        stats.paths_ever = len(walk.all_paths)
        stats.head_paths = len(walk.manifest)
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


class _Walk:
    """One pass over a ``Synth``: the plan, then each commit's changes and blobs.

    Every random draw comes from one ``random.Random`` in a fixed order
    (planning first, then per commit: text changes, binary changes, deletions,
    the commit record), which is what makes a history reproducible.
    """

    def __init__(self, synth: Synth) -> None:
        self.synth = synth
        self.rng = random.Random(synth.seed * 1_000_003 + round(synth.scale * 1e6))
        self.counts = synth.counts
        self.manifest: dict[str, str] = {}
        self.lines: dict[str, array] = {}        # text path -> line seeds
        self.text_paths: list[str] = []          # live text paths (hot ones first-ish)
        self.bin_paths: list[str] = []
        self.all_paths: set[str] = set()
        self.dirs: dict[str, list[str]] = {}
        self.seen: set[str] = set()
        self.stats = Stats()
        self.parent: str | None = None
        self.now = START
        self._plan()

    # -- planning: how many text / binary changes and deletions each commit makes --

    def _plan(self) -> None:
        rng, c = self.rng, self.counts
        n = c["commits"]
        self.text_touches = [0] * n
        self.text_touches[0] = c["initial_paths"]
        for i in range(1, n):
            self.text_touches[i] = 1
        for _ in range(c["text_blobs"] - c["initial_paths"] - (n - 1)):
            self.text_touches[1 + rng.randrange(n - 1)] += 1
        self.bin_touches = [0] * n
        for _ in range(c["binary_blobs"]):
            self.bin_touches[rng.randrange(n)] += 1
        self.deletes = [0] * n
        late = range(max(1, n // 3), n)          # once there is something to delete
        for i in rng.sample(late, min(c["deletes"], len(late))):
            self.deletes[i] = 1
        self.adds_left = c["text_paths"] - c["initial_paths"]
        self.touches_left = sum(self.text_touches) - c["initial_paths"]
        self.bin_adds_left = c["binary_paths"]
        self.bin_touches_left = c["binary_blobs"]

    # -- one commit ------------------------------------------------------------------

    def commit(self, i: int) -> CommitStep:
        cur = _Change()
        self._text_changes(i, cur)
        self._binary_changes(i, cur)
        self._deletion(i, cur)
        return self._record(i, cur)

    def _text_changes(self, i: int, cur: _Change) -> None:
        rng = self.rng
        for _ in range(self.text_touches[i]):
            if i == 0:
                add = True
            else:
                free = len(self.text_paths) - len(cur.touched & self.lines.keys())
                add = self.adds_left > 0 and (free <= 0 or rng.random() < self.adds_left / self.touches_left)
                self.touches_left -= 1
            if add:
                path, data = self._text_add()
                if i:
                    self.adds_left -= 1
                cur.added.append(path)
                self._put(cur, path, data, False)
                continue
            for _ in range(20):
                path = self.text_paths[int(len(self.text_paths) * rng.random() ** 1.6)]
                if path not in cur.touched:
                    break
            else:
                continue
            cur.modified.append(path)
            self._put(cur, path, self._text_edit(path), False)

    def _binary_changes(self, i: int, cur: _Change) -> None:
        rng = self.rng
        for _ in range(self.bin_touches[i]):
            free = [p for p in self.bin_paths if p not in cur.touched]
            add = self.bin_adds_left > 0 and (not free or rng.random() < self.bin_adds_left / self.bin_touches_left)
            self.bin_touches_left -= 1
            if add:
                path = self._new_path("bin")
                self.bin_paths.append(path)
                self.bin_adds_left -= 1
                cur.added.append(path)
            elif free:
                path = rng.choice(free)
                cur.modified.append(path)
            else:
                continue
            self._put(cur, path, self._binary_content(), True)

    def _deletion(self, i: int, cur: _Change) -> None:
        if not self.deletes[i]:
            return
        cands = [p for p in self.text_paths if p not in cur.touched]
        if len(cands) > 1:
            path = self.rng.choice(cands)
            self.text_paths.remove(path)
            del self.lines[path]
            del self.manifest[path]
            cur.changes.append(("D", path, None))
            cur.removed.append(path)
            self.stats.deletes += 1

    def _record(self, i: int, cur: _Change) -> CommitStep:
        rng, synth = self.rng, self.synth
        self.now = self.now + _dt.timedelta(seconds=rng.randint(60, 2 * 86400 // 3),
                                            microseconds=rng.randrange(1_000_000))
        committed_at = _iso(self.now)
        message = synth._message(rng, i, cur.added, cur.modified, cur.removed)
        snap = dict(self.manifest)
        snapshot_id = snapshot_digest(snap)
        parents = [self.parent] if self.parent else []
        commit_id = commit_digest(parents, snapshot_id, message, committed_at)
        commit = {
            "commit_id": commit_id,
            "repo_id": synth.repo_id,
            "branch": synth.branch,
            "snapshot_id": snapshot_id,
            "message": message,
            "committed_at": committed_at,
            "parent_commit_id": self.parent,
            "parent2_commit_id": None,
            "author": AUTHORS[rng.randrange(len(AUTHORS))],
            "metadata": {},
        }
        snapshot = {"snapshot_id": snapshot_id, "manifest": snap, "created_at": committed_at}
        self.stats.commits += 1
        self.stats.head_commit_id = commit_id
        self.stats.head_snapshot_id = snapshot_id
        self.parent = commit_id
        return CommitStep(i, commit, snapshot, cur.new_blobs, cur.changes)

    def _put(self, cur: _Change, path: str, data: bytes, binary: bool) -> None:
        oid = object_digest(data)
        self.manifest[path] = oid
        cur.changes.append(("M", path, oid))
        cur.touched.add(path)
        if oid not in self.seen:
            self.seen.add(oid)
            cur.new_blobs.append((oid, data))
            self.stats.blob_bytes += len(data)
            if binary:
                self.stats.binary_blobs += 1
            else:
                self.stats.text_blobs += 1

    # -- paths -----------------------------------------------------------------------

    def _new_dir(self, kind: str) -> str:
        rng = self.rng
        while True:
            a, b = rng.choice(WORDS[:-4]), rng.choice(WORDS[:-4])
            d = {
                ".py": f"src/{a}/{b}",
                "test": f"tests/{a}",
                ".md": f"docs/{a}",
                ".csv": f"data/{a}_{b}",
                "bin": f"assets/{a}",
            }[kind]
            if d not in self.dirs.get(kind, ()):
                self.dirs.setdefault(kind, []).append(d)
                return d

    def _new_path(self, kind: str) -> str:
        rng = self.rng
        pool = self.dirs.get(kind, [])
        while True:
            d = rng.choice(pool) if pool and rng.random() < 0.88 else self._new_dir(kind)
            a, b = rng.choice(WORDS[:-4]), rng.choice(WORDS[:-4])
            name = {
                ".py": f"{a}_{b}.py",
                "test": f"test_{a}_{b}.py",
                ".md": f"{a}-{b}.md",
                ".csv": f"{a}_{rng.randrange(100)}.csv",
                "bin": f"{a}-{b}.{rng.choice(('bin', 'dat', 'pak'))}",
            }[kind]
            path = f"{d}/{name}"
            if path not in self.all_paths:
                self.all_paths.add(path)
                return path

    # -- blob generation ---------------------------------------------------------------

    def _text_add(self) -> tuple[str, bytes]:
        rng = self.rng
        r = rng.random()
        kind = ".py" if r < 0.5 else "test" if r < 0.65 else ".md" if r < 0.85 else ".csv"
        path = self._new_path(kind)
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
        self.lines[path] = seeds
        self.text_paths.append(path)
        return path, ("\n".join(out) + "\n").encode()

    def _text_edit(self, path: str) -> bytes:
        rng = self.rng
        seeds = self.lines[path]
        fn = _RENDER[path[path.rfind("."):]]
        out = [fn(s) for s in seeds]
        before = "\n".join(out)
        for _ in range(1 + int(rng.random() ** 2 * max(1, len(seeds) // 10))):
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

    def _binary_content(self) -> bytes:
        rng = self.rng
        size = BINARY_MIN + int((BINARY_MAX - BINARY_MIN) * rng.random() ** BINARY_SKEW)
        return rng.randbytes(size)


@dataclass
class _Change:
    """What one commit is building: its manifest edits, new blobs, and the paths it names."""

    changes: list[tuple[str, str, str | None]] = field(default_factory=list)
    new_blobs: list[tuple[str, bytes]] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


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
