"""Serving a stored pack through a signed URL: token, Range, headers, sendfile.

The token is checked before anything touches the disk. The file is opened
before streaming starts, so a GC that deletes it mid-download does not cut the
download short (the open descriptor keeps the bytes). HEAD is verified as GET.
A single range is served as 206; several ranges get the whole file (200), as
RFC 9110 allows; a range that starts past the end is 416.

Behind nginx with ``MPACKHUB_ACCEL_REDIRECT`` set, a local store's pack is
handed to the proxy instead: once the token is checked, the answer is an
empty 200 whose ``X-Accel-Redirect`` names the file under the proxy's
internal location, and nginx sends it (ranges included) without holding a
hub thread or a download slot.

A GET served by the hub holds one of the worker's download slots (``hub.download_slots``, at
most so many per worker and per client: ``mpack/hub/slots.py``) until its
stream is closed — the thread is the client's for as long as it reads, and
a worker must keep threads for hits and pushes. A HEAD sends no body and
takes none.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from mpack.format import ids
from mpack.hub.errors import MPackMissing, RangeNotSatisfiable
from mpack.hub.slots import client_key
from storage import MPACKS, mpack_path
from storage.errors import StoredObjectMissing

if TYPE_CHECKING:
    from mpack.hub.services import Hub

_SINGLE_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.ASCII)
_BEYOND_ANY_FILE = 10**18  # a position with more digits than this is past every end (int() refuses 4,300+ digits)
CACHE_CONTROL = "private, max-age=31536000, immutable"


class RangeFile:
    """A window of an open file: ``read`` stops at the window; ``fileno`` lets gunicorn sendfile it;
    ``close`` closes the file, then calls each of its ``on_close`` callbacks (once)."""

    def __init__(self, raw: IO[bytes], start: int, length: int, on_close: Callable[[], None] | None = None) -> None:
        if start:
            raw.seek(start)
        self._raw, self._left = raw, length
        self._on_close = [on_close] if on_close is not None else []

    def read(self, size: int = -1) -> bytes:
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._raw.read(size) if size else b""
        self._left -= len(data)
        return data

    def fileno(self) -> int:
        return self._raw.fileno()

    def when_closed(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    def close(self) -> None:
        callbacks, self._on_close = self._on_close, []
        try:
            self._raw.close()
        finally:
            for callback in callbacks:
                callback()


@dataclass
class Served:
    """A download's answer: ``stream`` and ``length`` to send, or (``stream`` None) only ``headers``
    that hand the file to the proxy."""

    stream: IO[bytes] | RangeFile | None
    length: int
    partial: bool
    headers: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range`` → (start, length) of one satisfiable range; None to serve everything."""
    if not header:
        return None
    match = _SINGLE_RANGE.fullmatch(header.strip())
    if match is None:  # malformed or several ranges: ignore the header (RFC 9110 §14.2)
        return None
    first, last = (_position(group) for group in match.groups())
    if first is None and last is None:
        return None
    if first is None:  # suffix: the last N bytes
        count = last
        if count == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        count = min(count, size)
        return size - count, count
    start = first
    if start >= size:
        raise RangeNotSatisfiable(size)
    end = min(last, size - 1) if last is not None else size - 1
    if end < start:
        return None
    return start, end - start + 1


def _position(digits: str) -> int | None:
    if not digits:
        return None
    return int(digits) if len(digits) <= 18 else _BEYOND_ANY_FILE


def open_signed_download(hub: Hub, mpack_id: str, params: Mapping[str, str], range_header: str | None, *,
                         head: bool = False, address: str = "-", via_proxy: bool = False) -> Served:
    """Verify the token, open the pack, pick the range; a GET holds a download slot of the client
    ``address``'s until its stream is closed, and its bytes are counted (a HEAD sends none). With
    ``MPACKHUB_ACCEL_REDIRECT``, a local store and a request that came ``via_proxy`` (its peer is a trusted
    proxy: a client that reached the hub directly would get an empty answer): verify the token, and
    answer with the file for the proxy.

    Raises:
        ServerBusy: every download slot of this worker is taken (ClientShareTaken: the client's share is).
    """
    hub.store.signer.verify("GET", mpack_path(ids.check_id(mpack_id, "mpack id")), params)
    digest = ids.hex_of(mpack_id)
    if via_proxy and hub.settings.accel_redirect:
        handed = _hand_to_proxy(hub, digest, hub.settings.accel_redirect)
        if handed is not None:
            if not head:
                hub.metrics.download_proxied()
            return handed
    served = _open(hub, digest, range_header)
    if head:
        return served
    try:
        give_back = hub.download_slots.take(client_key(None, address))  # URL holders: never a user
    except BaseException:
        served.close()
        raise
    served.stream = RangeFile(served.stream, 0, served.length, on_close=give_back)
    hub.metrics.download(served.length, partial=served.partial)
    return served


def _hand_to_proxy(hub: Hub, digest: str, location: str) -> Served | None:
    """The proxy's answer for a stored file; None where the store has no files (a bucket's stream)."""
    try:
        path = hub.store.served_path(MPACKS, digest)
    except StoredObjectMissing:
        raise _gone() from None
    if path is None:
        return None
    return Served(None, 0, False, {"X-Accel-Redirect": location + path, "Cache-Control": CACHE_CONTROL})


def _open(hub: Hub, digest: str, range_header: str | None) -> Served:
    try:
        raw = hub.store.open(MPACKS, digest)
    except StoredObjectMissing:
        raise _gone() from None
    headers = {"ETag": f'"{digest}"', "Accept-Ranges": "bytes", "Cache-Control": CACHE_CONTROL}
    if not raw.seekable():  # a bucket's stream (URLs signed before a move to S3): whole file, no ranges
        headers.pop("Accept-Ranges")
        return Served(raw, hub.store.size(MPACKS, digest), False, headers)
    size = _size_of(raw)
    try:
        window = parse_range(range_header, size)
    except RangeNotSatisfiable:
        raw.close()
        raise
    if window is None:
        return Served(raw, size, False, headers)
    start, length = window
    headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
    return Served(RangeFile(raw, start, length), length, True, headers)


def _gone() -> MPackMissing:
    return MPackMissing("this pack is no longer stored; ask /fetch/mpack for a new URL")


def _size_of(raw: IO[bytes]) -> int:
    raw.seek(0, 2)
    size = raw.tell()
    raw.seek(0)
    return size
