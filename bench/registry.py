"""The benchmarks ``python -m bench`` knows: name → module.

A benchmark is a module with ``run(scale: float | None, quick: bool) ->
list[Table]``: ``scale`` None means the module's own default, ``quick`` a
smaller, faster run. Add one by writing ``bench/<name>.py`` and a line here;
modules are imported only when their benchmark runs.
"""
from __future__ import annotations

import importlib
from types import ModuleType

BENCHMARKS: dict[str, str] = {
    "push": "bench.push",          # issue 2: push throughput vs plain fsync'd writes
    "prebuild": "bench.prebuild",  # issue 4: push → cache row latency; job pool throughput
    "gc": "bench.gc",              # issue 5: GC over 100k cache rows and 10k packs
    "fetch": "bench.fetch_path",   # issue 3: cold build vs sha256, peak RSS 1×/4×, clone vs git, deltas
    "clone-branches": "bench.clone_branches",  # issue 10: clone of every branch: packs per branch vs one
    "scaleout": "bench.scaleout",  # issue 11: SQLite + local vs PostgreSQL + S3 (hits/s, clone via presigned URLs)
    "hit": "bench.hit",            # issue 8: cache-hit fetch/mpack req/s vs a bare Falcon route (wrk)
    "all": "bench.table",          # issue 8's table: fetch + hit + push, each row with its anchor and target
}

# ``python -m bench`` with no names: "all" covers fetch, hit and push, so they are not run twice.
DEFAULT = ["all", "prebuild", "gc", "clone-branches"]


def load(name: str) -> ModuleType:
    """The module of benchmark ``name``; KeyError when it is not registered."""
    return importlib.import_module(BENCHMARKS[name])
