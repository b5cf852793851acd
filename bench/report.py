"""Printing benchmark results and keeping docs/benchmarks.md up to date.

The document holds a free-form introduction, then one section per benchmark
between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` markers. Writing
a benchmark's section replaces only what lies between its own markers (or
appends the section when it is new); everything else is kept byte for byte.
The file is replaced atomically (temp file + rename).
"""
from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Sequence
from pathlib import Path

from bench.util import Table, machine_summary

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

INTRO = """# Benchmarks

Run them from the repository root (Python 3.11, the project installed with
its test extras; `apt-get install git nginx fcgiwrap wrk` for the anchors):

    python -m bench all                     # issue 8's table: fetch 1×/4×, hit, push — ~20 min on 2 cores
    python -m bench                         # all, prebuild, gc, clone-branches
    python -m bench push gc --scale 0.1     # some of them, smaller
    python -m bench hit --quick             # a fast, small run
    python -m bench --help

Each run prints a markdown table per benchmark and replaces that benchmark's
section below (and only it; ``--no-doc`` leaves this file alone). Every
figure is measured next to its anchor in the same run and reported as a
ratio (shared/BENCHMARKS.md): the machines are shared and noisy, so compare
ratios, not raw figures, across runs and machines. Temporary hubs and stores
go under ``$TMPDIR`` (default /tmp), which picks the disk measured.
``tests/test_bench_smoke.py`` runs every benchmark at its tiniest size.

`python -m bench all` is issue 8's "must show": its first table has one row
per row of the issue's table (1× and 4× where the issue says so), each with
the anchor measured in the same run, the target and pass/miss (a miss says by
how much); the fetch, hit and push tables it was computed from follow it.
Why each miss misses, and what would close it, is in the section after it.
"""


def heading(command: str, when: dt.datetime | None = None, load: tuple[float, float] | None = None) -> str:
    """The line that heads a benchmark's results: date, machine, load and the command that made them.

    ``load`` is the 1-minute load average at the start and at the end of the run:
    above the CPU count, other work shared the machine (the figures are noisier).
    """
    when = when or dt.datetime.now(dt.UTC)
    busy = f" · load average {load[0]:.1f} → {load[1]:.1f}" if load else ""
    return f"_{when:%Y-%m-%d %H:%M} UTC · {machine_summary()}{busy} · `{command}`_"


def section(name: str, about: str, command: str, tables: Sequence[Table], when: dt.datetime | None = None,
            load: tuple[float, float] | None = None) -> str:
    """A benchmark's section: title, what it measures, heading line, its tables."""
    parts = [f"## {name}", about.strip(), heading(command, when, load)]
    parts += [table.render() for table in tables]
    return "\n\n".join(p for p in parts if p) + "\n"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def replace_section(document: str, name: str, body: str) -> str:
    """``document`` with benchmark ``name``'s section set to ``body`` (appended when absent)."""
    start, end = _markers(name)
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document, count=1)
    return document.rstrip() + "\n\n" + block + "\n"


def update_doc(path: Path, name: str, body: str) -> None:
    """Write ``body`` as benchmark ``name``'s section of ``path`` (created with an intro if missing)."""
    document = path.read_text(encoding="utf-8") if path.exists() else INTRO
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(replace_section(document, name, body), encoding="utf-8")
    os.replace(temp, path)
