"""A download's socket gives up on a client that stops reading, or reads too slowly.

gunicorn's threads write a response on a blocking socket; a pack download
(``sendfile``) from a client that reads nothing then holds its thread for as
long as the client keeps the connection open — a few such clients stalled a
whole worker (measured: three idle readers of a 40 MB pack made ``/healthz``
time out on a worker of two threads). Two bounds free the thread:

- a stall: with a timeout on the socket, Python's ``socket.sendfile`` and
  ``sendall`` raise ``TimeoutError`` once the socket has not become writable
  for ``send_timeout`` seconds; gunicorn closes the connection (logging it as
  a socket error). gunicorn makes the socket blocking again for the next
  request of a kept-alive connection.
- a trickle: a client that reads just often enough never stalls, so a
  download must also be done within ``send_timeout + length / min_rate``
  seconds. Past that the watchdog shuts the socket, which makes the blocked
  ``sendfile`` fail at once. Holding a download slot then costs a client at
  least ``min_rate`` bytes a second of its own bandwidth.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable

from mpack.http.logs import request_id
from mpack.http.watchdog import Watchdog

log = logging.getLogger("mpackhub.download")


class _Send:
    """One response being sent under a deadline."""

    __slots__ = ("sock", "due", "length", "remote", "request_id", "on_cut")

    def __init__(self, sock: socket.socket, due: float, length: int, remote: str,
                 on_cut: Callable[[], None]) -> None:
        self.sock, self.due, self.length, self.remote, self.on_cut = sock, due, length, remote, on_cut
        self.request_id = request_id.get()  # the watchdog's thread logs outside the request

    def deadline(self) -> float:
        return self.due

    def expire(self) -> None:
        """Count and log the cut, then shut the socket (which wakes the thread blocked sending)."""
        with contextlib.suppress(Exception):  # a metric must not kill the watchdog
            self.on_cut()
        log.warning("download cut: below the minimum rate",
                    extra={"remote": self.remote, "bytes": self.length, "request_id": self.request_id})
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class SendBounds:
    """The stall timeout and the whole-response deadline of downloads, for one worker process."""

    def __init__(self, send_timeout: float, min_rate: int, *, on_cut: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.send_timeout, self.min_rate, self.on_cut = send_timeout, min_rate, on_cut
        self.clock = clock
        self._watchdog = Watchdog(clock, "send-deadlines")

    def bound(self, environ: dict, length: int, remote: str = "-") -> Callable[[], None]:
        """Bound the rest of this response of ``length`` bytes → the call that ends the bound (idempotent).

        Without the server's socket (``environ["gunicorn.socket"]``: the tests' webtest), or with
        ``send_timeout`` 0, nothing is bounded; with ``min_rate`` 0 only stalls are.
        """
        sock = environ.get("gunicorn.socket")
        if not self.send_timeout or sock is None or not hasattr(sock, "settimeout"):
            return _nothing
        sock.settimeout(self.send_timeout)
        if not self.min_rate:
            return _nothing
        send = _Send(sock, self.clock() + self.send_timeout + length / self.min_rate, length, remote, self.on_cut)
        self._watchdog.add(send)
        return lambda: self._watchdog.discard(send)


def _nothing() -> None:
    return None
