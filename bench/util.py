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
import sys
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
    "machine_summary",
    "measure",
    "median",
    "peak_rss_of",
    "timer",
    "wait_until",
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


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.005,
               what: str = "a condition") -> Any:
    """Poll ``predicate`` until it returns something true, and return that; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


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
#
# Linux quirk that shapes this code: at exec(), the kernel folds the *old*
# address space's high-water RSS into the new program's ru_maxrss. A child
# that Python forks (or vforks) from a big parent therefore reports at least
# the parent's RSS, whatever it does itself. So a command is started by a tiny
# launcher interpreter (``python -S -I``, ~10 MiB), which spawns the target
# and reports ``wait4`` of that one pid: the floor is the launcher's RSS, not
# ours. A callable's child reads its own VmHWM (the new address space's peak,
# not inherited) and its waited-for children's peak.

@dataclass(frozen=True)
class Measured:
    """One measured run: wall seconds, peak RSS (MiB) of the child and what it returned."""

    seconds: float
    peak_rss_mb: float
    value: Any = None          # the callable's return value, or the command's exit status


_LAUNCHER = r"""
import os, signal, sys, time
fd = int(sys.argv[1])
os.set_inheritable(fd, False)
argv = sys.argv[2:]
t0 = time.perf_counter()
try:
    pid = os.posix_spawnp(argv[0], argv, os.environ)
except OSError as exc:
    os.write(fd, b"-1 0 0 " + repr(exc).encode())
    sys.exit(127)
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, lambda s, f: os.kill(pid, s))
while True:
    try:
        _, status, usage = os.wait4(pid, 0)
        break
    except InterruptedError:
        pass
seconds = time.perf_counter() - t0
code = os.waitstatus_to_exitcode(status)
os.write(fd, f"{code} {usage.ru_maxrss} {seconds!r}".encode())
sys.exit(code if code >= 0 else 128 - code)
"""


def _vm_hwm_kib() -> int:
    """This process's own peak RSS in KiB (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child_main(conn, fn, args, kwargs) -> None:
    try:
        value = fn(*args, **kwargs)
        error = None
    except BaseException as exc:  # reported to the parent
        value, error = None, f"{type(exc).__name__}: {exc}"
    peak = max(_vm_hwm_kib(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    try:
        conn.send((value, error, peak))
    except Exception as exc:  # an unpicklable return value
        conn.send((None, f"cannot send the result back: {exc}", peak))
    conn.close()


def measure(target: Callable[..., Any] | Sequence[str] | str, *args: Any,
            check: bool = True, **kwargs: Any) -> Measured:
    """Run ``target`` in a child process; its wall time and peak RSS, and nothing else's.

    ``target`` is a command (a list of arguments, or a string run by
    ``/bin/sh -c``) or a callable.

    A command is spawned by a small launcher interpreter and reaped with
    ``os.wait4``; the peak covers the command and the descendants it waited
    for (``git clone`` -> ``index-pack`` included), never this process or
    its earlier children. Floor: ~10 MiB (the launcher's footprint, which
    the kernel charges to the program it execs). ``seconds`` is timed by
    the launcher around the command alone. Extra keyword arguments go to
    ``subprocess.Popen`` (``cwd``, ``env``, ``stdout``…); ``value`` is the
    exit status.

    A callable runs in a fresh ``multiprocessing`` "spawn" child (so it must
    be importable and its arguments picklable) and the child reports its own
    peak (VmHWM) and its children's; that includes a fresh interpreter
    (~10-20 MiB) and whatever the callable's module imports. Extra keyword
    arguments go to the callable; ``value`` is its return value. With
    ``check`` a failure (non-zero exit, exception) raises RuntimeError.
    """
    if callable(target):
        return _measure_callable(target, args, kwargs, check)
    if args:
        raise TypeError("pass a command's arguments inside the command itself")
    return _measure_command(target, check, kwargs)


def _measure_callable(target: Callable[..., Any], args: tuple, kwargs: dict, check: bool) -> Measured:
    """``measure`` of a callable: a "spawn" child runs it and reports (value, error, its peak RSS in KiB)."""
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(child_conn, target, args, kwargs))
    started = time.perf_counter()
    proc.start()
    child_conn.close()
    try:
        value, error, peak = parent_conn.recv()
    except EOFError:
        value, error, peak = None, "the child died without reporting", 0
    finally:
        parent_conn.close()
    proc.join()
    seconds = time.perf_counter() - started
    if error is None and proc.exitcode:
        error = f"the child exited with status {proc.exitcode}"
    if error and check:
        raise RuntimeError(f"measured callable failed: {error}")
    return Measured(seconds, peak / 1024, value)


def _measure_command(target: Sequence[str] | str, check: bool, popen_kwargs: dict) -> Measured:
    """``measure`` of a command: the launcher execs it, waits for it with wait4 and reports status, peak, seconds."""
    argv = ["/bin/sh", "-c", target] if isinstance(target, str) else [os.fspath(a) for a in target]
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-S", "-I", "-c", _LAUNCHER, str(write_fd), *argv],
                                pass_fds=(write_fd,), **popen_kwargs)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as fh:
            report = fh.read().decode()
        proc.wait()
    except BaseException:
        proc.terminate()  # the launcher forwards it to the command
        proc.wait()
        raise
    parts = report.split(" ", 3)
    if len(parts) < 3 or parts[0] == "-1":
        why = parts[3] if len(parts) == 4 else f"launcher exited with {proc.returncode}"
        raise RuntimeError(f"could not start {argv!r}: {why}")
    code, maxrss, seconds = int(parts[0]), int(parts[1]), float(parts[2])
    if check and code != 0:
        raise RuntimeError(f"measured command failed with status {code}: {target!r}")
    return Measured(seconds, maxrss / 1024, code)


def peak_rss_of(target: Callable[..., Any] | Sequence[str] | str, *args: Any, **kwargs: Any) -> float:
    """Peak resident set size in MiB of ``target`` run alone in a child (see ``measure``)."""
    return measure(target, *args, **kwargs).peak_rss_mb


# -- the machine ---------------------------------------------------------------------------

def machine_summary() -> str:
    """``2 CPUs, 23.4 GiB RAM, Python 3.11.7``: what a result was measured on."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpus} CPUs, {ram:.1f} GiB RAM, Python {sys.version.split()[0]}"


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
