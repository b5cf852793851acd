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

import hashlib
import time
import uuid
from collections.abc import Iterator

from bench.synth_walk import BINARY_MIN, START, CommitStep, Stats, _iso, _Walk  # noqa: F401 — re-exported

__all__ = [
    "CommitStep",
    "Stats",
    "Synth",
    "generate",
]


# -- reference sizes at scale 1 ---------------------------------------------------
COMMITS = 2000
TEXT_BLOBS = 4950
TEXT_PATHS = 1435
BINARY_BLOBS = 200
BINARY_PATHS = 65
DELETES = 30

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


