"""``python -m bench [NAME ...] [--scale S] [--quick]``: run benchmarks, print and record their tables.

``python -m bench all`` prints issue 8's table (every row with its anchor,
target and pass/miss) followed by the fetch, hit and push tables it came from.

Runs the named benchmarks (default: ``all``, ``prebuild``, ``gc``), prints a
markdown section per benchmark headed with the date and the machine, and
replaces that benchmark's section of docs/benchmarks.md (``--no-doc`` to
skip, ``--doc FILE`` to write elsewhere). ``--scale`` is passed to every
benchmark named (each says what it scales); ``--quick`` asks for small, fast
runs. Temporary hubs and stores go under ``$TMPDIR`` (default /tmp).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from bench import report
from bench.registry import BENCHMARKS, DEFAULT, load


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="Run benchmarks; print their tables and record them in docs/benchmarks.md.")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"benchmarks to run, of {', '.join(BENCHMARKS)} (default: {' '.join(DEFAULT)}; "
                        "'all' is issue 8's table and runs fetch, hit and push)")
    p.add_argument("--scale", type=float, help="size of the run (each benchmark documents its default)")
    p.add_argument("--quick", action="store_true", help="small, fast runs (smoke tests)")
    p.add_argument("--doc", type=Path, default=report.DOC, help="the results document (default: docs/benchmarks.md)")
    p.add_argument("--no-doc", action="store_true", help="print only; leave the results document alone")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    if args.scale is not None and not args.scale > 0:
        p.error("--scale must be positive")
    return args


def command_for(name: str, args: argparse.Namespace) -> str:
    """The command that re-runs just this benchmark the same way."""
    words = ["python", "-m", "bench", name]
    if args.scale is not None:
        words += ["--scale", f"{args.scale:g}"]
    if args.quick:
        words.append("--quick")
    return shlex.join(words)


def run_one(name: str, args: argparse.Namespace) -> str:
    module = load(name)
    before = os.getloadavg()[0]
    tables = module.run(args.scale, args.quick)
    about = (module.__doc__ or "").split("\n\n")[0]
    return report.section(name, about, command_for(name, args), tables, load=(before, os.getloadavg()[0]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in args.names or DEFAULT:
        print(f"running {name} …", file=sys.stderr, flush=True)
        body = run_one(name, args)
        print(body, flush=True)
        if not args.no_doc:
            report.update_doc(args.doc, name, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
