"""Small helpers shared by the benchmarks.

Units: sizes and rates in MB are 10**6 bytes (``MB``), except peak RSS, which
the kernel reports in KiB and we give in MiB (``ru_maxrss / 1024``).
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import resource
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MB",
    "Measured",
    "Table",
    "Timer",
    "free_port",
    "hashlib_sha256_mbps",
    "measure",
    "median",
    "peak_rss_of",
    "timer",
]

MB = 1_000_000
CHUNK = 1024 * 1024


# -- statistics and timing -----------------------------------------------------------

def median(values: Iterable[float]) -> float:
    """The median of a non-empty collection (mean of the middle two when even)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of nothing")
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2


class Timer:
    """Elapsed wall-clock time; ``seconds`` is live inside the block, final after it."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.end: float | None = None

    @property
    def seconds(self) -> float:
        return (self.end if self.end is not None else time.perf_counter()) - self.start

    def __repr__(self) -> str:
        return f"Timer({self.seconds:.4f}s)"


@contextmanager
def timer():
    """``with timer() as t: ...`` then ``t.seconds``."""
    t = Timer()
    try:
        yield t
    finally:
        t.end = time.perf_counter()


# -- output -----------------------------------------------------------------------------

def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


class Table:
    """A markdown table built row by row: ``Table("what", "median s").add("x", 1.2).print()``."""

    def __init__(self, *columns: str, title: str | None = None) -> None:
        if len(columns) == 1 and not isinstance(columns[0], str):
            columns = tuple(columns[0])  # Table(["a", "b"]) works too
        self.columns = [str(c) for c in columns]
        self.rows: list[list[str]] = []
        self.title = title

    def add(self, *values: Any) -> Table:
        if len(values) != len(self.columns):
            raise ValueError(f"expected {len(self.columns)} values, got {len(values)}")
        self.rows.append([_cell(v) for v in values])
        return self

    def render(self) -> str:
        widths = [max([len(c)] + [len(r[i]) for r in self.rows]) for i, c in enumerate(self.columns)]
        numeric = [all(_looks_numeric(r[i]) for r in self.rows) and bool(self.rows)
                   for i in range(len(self.columns))]

        def line(cells: Sequence[str]) -> str:
            out = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
            return "| " + " | ".join(out) + " |"

        rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                              for w, num in zip(widths, numeric)) + "|"
        parts = [f"### {self.title}", ""] if self.title else []
        parts += [line(self.columns), rule] + [line(r) for r in self.rows]
        return "\n".join(parts)

    def print(self) -> None:
        print(self.render() + "\n", flush=True)

    __str__ = render


def _looks_numeric(text: str) -> bool:
    t = text.replace(",", "").replace("×", "").replace("%", "").strip()
    try:
        float(t)
    except ValueError:
        return False
    return True


# -- network -----------------------------------------------------------------------------

def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it; racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Block until something accepts connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


# -- memory -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Measured:
    """One measured run: wall seconds, peak RSS (MiB) of the child and what it returned."""

    seconds: float
    peak_rss_mb: float
    value: Any = None          # the callable's return value, or the command's exit status


def _child_main(conn, fn, args, kwargs) -> None:
    try:
        value = fn(*args, **kwargs)
        error = None
    except BaseException as exc:  # reported to the parent
        value, error = None, f"{type(exc).__name__}: {exc}"
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    try:
        conn.send((value, error, max(own, kids)))
    except Exception as exc:  # an unpicklable return value
        conn.send((None, f"cannot send the result back: {exc}", max(own, kids)))
    conn.close()


def measure(target: Callable[..., Any] | Sequence[str] | str, *args: Any,
            check: bool = True, **kwargs: Any) -> Measured:
    """Run ``target`` in a child process and measure it alone.

    ``target`` is a command (a list of arguments, or a string run through the
    shell) or a callable. A command runs under ``subprocess`` and is reaped
    with ``os.wait4``, whose rusage covers that child and the descendants it
    waited for, nothing else this process ran. A callable runs in a fresh
    ``multiprocessing`` "spawn" child (so it must be importable and its
    arguments picklable); the child reports its own ``RUSAGE_SELF`` /
    ``RUSAGE_CHILDREN`` peaks, so earlier children of this process never
    count. The spawn child's peak includes a fresh interpreter (~10 MiB) and
    whatever the callable's module imports. Extra keyword arguments go to
    ``subprocess.Popen`` for commands and to the callable otherwise. With
    ``check`` a failure raises RuntimeError.
    """
    if callable(target):
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child_main, args=(child_conn, target, args, kwargs))
        started = time.perf_counter()
        proc.start()
        child_conn.close()
        try:
            value, error, maxrss = parent_conn.recv()
        except EOFError:
            value, error, maxrss = None, "the child died without reporting", 0
        proc.join()
        seconds = time.perf_counter() - started
        if error is None and proc.exitcode:
            error = f"the child exited with status {proc.exitcode}"
        if error and check:
            raise RuntimeError(f"measured callable failed: {error}")
        return Measured(seconds, maxrss / 1024, value)

    shell = isinstance(target, str)
    if args:
        raise TypeError("pass a command's arguments inside the command itself")
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    started = time.perf_counter()
    proc = subprocess.Popen(target, shell=shell, **kwargs)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # so Popen does not try to reap it again
    if check and code != 0:
        raise RuntimeError(f"measured command failed with status {code}: {target!r}")
    return Measured(seconds, usage.ru_maxrss / 1024, code)


def peak_rss_of(target: Callable[..., Any] | Sequence[str] | str, *args: Any, **kwargs: Any) -> float:
    """Peak resident set size in MiB of ``target`` run alone in a child (see ``measure``)."""
    return measure(target, *args, **kwargs).peak_rss_mb


# -- physical limits ------------------------------------------------------------------------

def hashlib_sha256_mbps(source: Iterable[bytes | str | os.PathLike], chunk: int = CHUNK) -> float:
    """Throughput of hashlib SHA-256 in MB/s over files or byte strings.

    Each item (a path, or a bytes-like) is hashed as one object, fed in
    ``chunk``-sized pieces (1 MiB by default, like the anchor). Only the
    hashing is timed, not the reads.
    """
    total = 0
    spent = 0.0
    clock = time.perf_counter
    for item in source:
        h = hashlib.sha256()
        if isinstance(item, (bytes, bytearray, memoryview)):
            view = memoryview(item)
            t0 = clock()
            for off in range(0, len(view), chunk):
                h.update(view[off:off + chunk])
            spent += clock() - t0
            total += len(view)
        else:
            with open(Path(item), "rb", buffering=0) as fh:
                buf = bytearray(chunk)
                view = memoryview(buf)
                while n := fh.readinto(buf):
                    t0 = clock()
                    h.update(view[:n])
                    spent += clock() - t0
                    total += n
        h.digest()
    if spent <= 0:
        raise ValueError("nothing was hashed")
    return total / MB / spent
