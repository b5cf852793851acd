"""Reading request bodies off the socket: a size limit, a deadline, a bounded number of readers.

Guarantees, per worker process:
- A body is read within ``body_timeout`` seconds, plus one second for every
  ``body_min_rate`` bytes already received (a large push on a slow link keeps
  going; a client that stalls does not). Past its deadline the read side of
  the socket is shut, the read returns, and the request is answered 408: a
  slow client holds a thread for at most that long.
- At most ``body_readers`` bodies are read at once (by default one less than
  the worker's threads), so a thread is always left for requests without a
  body (``/healthz``, ``refs``, downloads). A body that finds every reader
  taken waits up to ``SLOT_WAIT`` while some reader moves data at the minimum
  rate, and is answered 503 (``Retry-After: 1``) otherwise — at once when
  only stalled clients hold them. A small body (``ARRIVED_MAX``) that
  gunicorn already read with the headers is simply taken: it waits on no
  client, so it needs neither a reader nor a deadline (a cache hit's).
- A request answered before its body was read (401, 403, 404, 413 …) has the
  body read and discarded first, up to ``body_drain_bytes`` and within the
  deadline, so that a client that sends its whole body before reading the
  answer (the Muse CLI, curl, requests) receives the JSON error instead of a
  broken pipe. A body too large to drain gets its answer and a closed socket.

Deadlines need the client socket, which gunicorn passes as
``environ["gunicorn.socket"]``; under other servers (the tests' webtest) the
body is read without one.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import falcon

from mpack.http.gunicorn_body import receive_into, taken_as_arrived
from mpack.http.watchdog import Watchdog
from mpack.hub.errors import BodyTimeout, BodyTooLarge, MalformedBody, ServerBusy
from mpack.hub.settings import Settings

CHUNK = 32 * 1024  # a body's first read counts this much as progress (_Watch.moving)
MIN_PIECE = 64  # the smallest read: what the slowest settings (1 KiB/s, 0.1 s) deliver in time
# The largest piece: gunicorn (27) keeps what it read ahead in a BytesIO and copies all of
# it on every read, so 32 KiB reads of a body cost ~16 copies of each byte (a push/objects
# of 85 MB spent 0.14 s of its 0.47 s there); one read per MiB costs one copy.
MAX_PIECE = 1024 * 1024
# Bodies at least this large are received straight into place (gunicorn_body.receive_into); a smaller one (a fetch,
# refs, filter-objects: the hit route's body is ~100 bytes) has nothing worth saving there.
DIRECT_MIN = 256 * 1024
# A body this small that gunicorn already read with the headers is taken from its buffer, without a
# reader slot or a deadline (gunicorn_body.taken_as_arrived): there is no client to wait for.
ARRIVED_MAX = 64 * 1024
SLOT_WAIT = 2.0  # how long a body waits for a reader that moving uploads hold
# A body refused for want of a reader is taken if it has already arrived (a fast client
# then reads its 503 rather than a reset); a stalled one costs the thread this long.
QUICK_DRAIN_BYTES, QUICK_DRAIN_SECONDS = 1024 * 1024, 0.01


@dataclass(eq=False)
class _Watch:
    """One body being read: its deadline moves forward with the bytes received."""

    sock: socket.socket | None
    started: float
    timeout: float
    min_rate: float
    received: int = 0
    piece: int = CHUNK  # the size of the read in progress
    expired: bool = False

    def deadline(self) -> float:
        return self.started + self.timeout + self.received / self.min_rate

    def moving(self, now: float) -> bool:
        """Whether bytes arrive at the minimum rate at least (a fast upload, not a stalled client).

        The piece being read counts as received: a reader is moving for its first
        ``CHUNK / min_rate`` seconds, then only if it keeps up.
        """
        return self.received + self.piece >= self.min_rate * (now - self.started)

    def next_piece(self, now: float, wanted: int) -> int:
        """How much to read next: as much as arrives at the minimum rate in half the time left
        before the deadline (at most ``MAX_PIECE``), so that a client keeping the minimum rate
        always finishes a piece, and its progress moves the deadline, in time. A fast client
        gains time with every piece and is read a MiB at a time."""
        self.piece = min(wanted, max(MIN_PIECE, min(MAX_PIECE, int(self.min_rate * (self.deadline() - now) / 2))))
        return self.piece

    def expire(self) -> None:
        """Wake the thread blocked in recv(): with the read side shut, recv() returns b""."""
        self.expired = True
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RD)


class _Reading:
    """One body read under a reader slot and a watched deadline (a class, not a generator-based
    context manager: this runs for every request with a body, the cache hit's included)."""

    __slots__ = ("intake", "req", "watch")

    def __init__(self, intake: Intake, req: falcon.Request) -> None:
        self.intake, self.req = intake, req

    def __enter__(self) -> _Watch:
        intake, req = self.intake, self.req
        if not intake._acquire():
            intake._quick_drain(req)
            raise ServerBusy("every body reader of this worker is busy with a slow client; retry shortly")
        req.context.body_done = True  # whatever happens next, nobody reads this body again
        sock = req.env.get("gunicorn.socket")
        settings = intake.settings
        self.watch = watch = _Watch(sock, intake.clock(), settings.body_timeout, settings.body_min_rate)
        intake._active.add(watch)
        if sock is not None:
            intake._watchdog.add(watch)
        return watch

    def __exit__(self, *exc_info: object) -> None:
        intake, watch = self.intake, self.watch
        intake._watchdog.discard(watch)
        intake._active.discard(watch)
        intake._slots.release()


class Intake:
    """Reads and drains request bodies under the guarantees in this module's docstring."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._slots = threading.BoundedSemaphore(settings.body_readers)
        self._active: set[_Watch] = set()
        self._watchdog = Watchdog(clock, "body-deadlines")

    # -- reading ----------------------------------------------------------------------

    def read(self, req: falcon.Request, max_bytes: int) -> bytes | bytearray:
        """The whole body (at most ``max_bytes``, else BodyTooLarge); BodyTimeout past the deadline."""
        length = req.content_length
        if length is not None and length > max_bytes:
            raise BodyTooLarge(f"request body of {length} bytes exceeds this route's limit of {max_bytes}")
        if length == 0 or (length is None and not req.env.get("wsgi.input_terminated")):
            req.context.body_done = True
            return b""
        if length is not None and length <= ARRIVED_MAX:
            arrived = taken_as_arrived(req, length)
            if arrived is not None:
                req.context.body_done = True
                return arrived
        with self._reading(req) as watch:
            # A declared length is filled in place: the body is held once, not once in
            # pieces and again joined (a 256 MiB push would peak at 512 MiB).
            body = bytearray(length or 0)
            if length is not None and length >= DIRECT_MIN and receive_into(req, watch, body, self.clock):
                return body
            for piece in self._pieces(req, watch, max_bytes + 1):
                if length is not None:
                    body[watch.received - len(piece):watch.received] = piece
                    continue
                body += piece
                if watch.received > max_bytes:
                    req.context.body_done = False  # the rest is drained before the 413 goes out
                    raise BodyTooLarge(f"request body exceeds this route's limit of {max_bytes} bytes")
            return body

    def drain(self, req: falcon.Request) -> bool:
        """Read and discard an unread body (bounded) → whether the connection may be reused."""
        if getattr(req.context, "body_done", False) or not self._has_body(req):
            return True
        length = req.content_length
        if length is not None and length > self.settings.body_drain_bytes:
            self._give_up(req)
            return False
        try:
            with self._reading(req) as watch:
                for _ in self._pieces(req, watch, self.settings.body_drain_bytes + 1):
                    if watch.received > self.settings.body_drain_bytes:
                        raise BodyTooLarge("too large to drain")
        except (BodyTooLarge, BodyTimeout, MalformedBody, ServerBusy):
            self._give_up(req)
            return False
        return True

    # -- the parts ----------------------------------------------------------------------

    @staticmethod
    def _has_body(req: falcon.Request) -> bool:
        """Whether unread bytes may follow the headers (a GET without a body never needs a reader)."""
        chunked = req.content_length is None and req.get_header("Transfer-Encoding")
        # Without wsgi.input_terminated a chunked stream may not end at the body's end: never read it.
        return bool(req.content_length) or bool(chunked and req.env.get("wsgi.input_terminated"))

    def _reading(self, req: falcon.Request) -> _Reading:
        """``with self._reading(req) as watch``: a reader slot and a deadline for one body."""
        return _Reading(self, req)

    def _acquire(self) -> bool:
        """A reader: at once if one is free; else wait (briefly) only while some reader moves data.

        Readers held by stalled clients free up only at their deadline: a body
        that finds only those is refused at once, so the thread it holds is free
        again for /healthz. Readers held by uploads that move (the Muse CLI sends
        four push/objects at a time) free up soon: waiting for one is worth it.
        """
        if self._slots.acquire(blocking=False):
            return True
        give_up = self.clock() + min(SLOT_WAIT, self.settings.body_timeout)
        while self.clock() < give_up and any(w.moving(self.clock()) for w in list(self._active)):
            if self._slots.acquire(timeout=0.05):
                return True
        return False

    def _pieces(self, req: falcon.Request, watch: _Watch, at_most: int) -> Iterator[bytes]:
        # A chunked body has no Content-Length; a server that ends the stream at the
        # body's end says so with wsgi.input_terminated (gunicorn does).
        length = req.content_length
        stream = req.bounded_stream if length is not None else req.stream
        while length is None or watch.received < length:
            try:
                piece = stream.read(watch.next_piece(self.clock(), at_most - watch.received))
            except Exception as exc:  # noqa: BLE001 — a reset (OSError), or the server's own parse error (gunicorn's ParseException for a malformed chunk)
                if watch.expired:  # the watchdog shut the socket mid-chunk
                    raise BodyTimeout(f"the request body did not arrive within {self.settings.body_timeout:g} s") from None
                raise MalformedBody(f"the request body could not be read ({type(exc).__name__})") from None
            if watch.expired:
                raise BodyTimeout(f"the request body did not arrive within {self.settings.body_timeout:g} s")
            if not piece:
                if length is None:
                    return
                raise MalformedBody(f"the request body ended after {watch.received} of {length} bytes")
            watch.received += len(piece)
            yield piece
            if watch.received >= at_most:
                return

    def _quick_drain(self, req: falcon.Request) -> None:
        """Without a reader: take what already arrived of a small body, else give up on it."""
        req.context.body_done = True
        sock, length = req.env.get("gunicorn.socket"), req.content_length
        if sock is None or length is None or length > QUICK_DRAIN_BYTES:
            self._give_up(req)
            return
        watch = _Watch(sock, self.clock(), QUICK_DRAIN_SECONDS, float("inf"))
        self._watchdog.add(watch)
        try:
            for _ in self._pieces(req, watch, length + 1):
                pass
        except (BodyTimeout, MalformedBody):
            self._give_up(req)
        finally:
            self._watchdog.discard(watch)

    @staticmethod
    def _give_up(req: falcon.Request) -> None:
        """Do not read this body: shut the read side so the server closes without waiting on it."""
        req.context.body_done = True
        sock = req.env.get("gunicorn.socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)


def read_raw(req: falcon.Request, max_bytes: int) -> bytes | bytearray:
    """The raw body, at most ``max_bytes``: through the app's ``Intake`` (deadline, readers, drain)
    when its middleware installed one, else read plainly (an app assembled without it)."""
    intake = getattr(req.context, "intake", None)
    if intake is not None:
        return intake.read(req, max_bytes)
    length = req.content_length
    if length is not None and length > max_bytes:
        raise BodyTooLarge(f"request body of {length} bytes exceeds this route's limit of {max_bytes}")
    chunked = length is None and req.env.get("wsgi.input_terminated")
    raw = (req.stream if chunked else req.bounded_stream).read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise BodyTooLarge(f"request body exceeds this route's limit of {max_bytes} bytes")
    return raw


class BodyMiddleware:
    """Hands each request the process's ``Intake``; drains bodies nobody read before answering."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.intake = self.intake

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        self.intake.drain(req)
