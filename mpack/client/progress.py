"""Progress of downloads and applies: a tqdm bar on a terminal, nothing otherwise.

``Bars`` is what the client commands pass down to clone/fetch/pull: calling it
with a label gives a ``Bar`` (bytes, rate and ETA, redrawn at most ten times
a second by tqdm) when its stream is a terminal, or None when it is not or
the user asked for ``--quiet`` — so pipes, logs and CI output stay clean.
A ``Bar`` is a ``(done, total)`` callback, as ``HubClient.download`` takes.
"""
from __future__ import annotations

import sys
from typing import BinaryIO, TextIO

REPORT_EVERY = 256 << 10  # bytes between two callbacks while reading a pack


class Bar:
    """One tqdm bar in bytes; call it with (bytes done, total or None), then ``close()``."""

    def __init__(self, label: str, stream: TextIO) -> None:
        from tqdm import tqdm  # only on a terminal: a piped or quiet command does not pay for the import

        self._bar = tqdm(desc=label, total=None, unit="B", unit_scale=True, unit_divisor=1024,
                         file=stream, mininterval=0.1, dynamic_ncols=True, leave=True)
        self._first = True

    def __call__(self, done: int, total: int | None) -> None:
        if total and self._bar.total != total:
            self._bar.total = total
        if self._first and done:  # a resumed download: count what was already there, not as speed
            self._bar.reset(total=total)
            self._bar.n = self._bar.last_print_n = done
            self._first = False
            self._bar.refresh()
            return
        self._first = False
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


class Bars:
    """Makes a ``Bar`` per transfer when ``stream`` (stderr) is a terminal and not ``quiet``; else None."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = not quiet and self.stream.isatty()

    def __call__(self, label: str) -> Bar | None:
        return Bar(label, self.stream) if self.enabled else None


QUIET = Bars(quiet=True)


class CountingReader:
    """A read-only file wrapper that reports bytes read to a ``Bar`` (every ``REPORT_EVERY`` bytes and at the end)."""

    def __init__(self, fileobj: BinaryIO, total: int | None, bar: Bar) -> None:
        self._f, self._total, self._bar = fileobj, total, bar
        self.done, self._next = 0, REPORT_EVERY

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.done += len(data)
        if self.done >= self._next or not data:
            self._next = self.done + REPORT_EVERY
            self._bar(self.done, self._total)
        return data
