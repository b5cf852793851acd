"""One pass over a synthetic history (``bench.synth``): the plan, then each commit's changes and blobs.

Also the shapes every history shares: file sizes, the start date, and the
``CommitStep`` and ``Stats`` records a pass yields and fills.
"""
from __future__ import annotations

import datetime as _dt
import random
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.synth_text import _RENDER, AUTHORS, WORDS, _md_line
from mpack.format.ids import commit_digest, object_digest, snapshot_digest

if TYPE_CHECKING:
    from bench.synth import Synth

KIB = 1024
MIB = 1024 * 1024
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
        message = _message(rng, i, cur.added, cur.modified, cur.removed)
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

