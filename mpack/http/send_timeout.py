"""A response's socket gives up on a client that stops reading.

gunicorn's threads write a response on a blocking socket; a pack download
(``sendfile``) from a client that reads nothing then holds its thread for as
long as the client keeps the connection open — a few such clients stalled a
whole worker (measured: three idle readers of a 40 MB pack made ``/healthz``
time out on a worker of two threads). With a timeout on the socket, Python's
``socket.sendfile`` and ``sendall`` raise ``TimeoutError`` once the socket
has not become writable for that long, gunicorn closes the connection
(logging it as a socket error) and the thread is free. gunicorn makes the
socket blocking again for the next request of a kept-alive connection.
"""
from __future__ import annotations


def bound_send_stall(environ: dict, seconds: float) -> None:
    """Let the rest of this response wait at most ``seconds`` for the client to read (0: forever)."""
    sock = environ.get("gunicorn.socket")
    if seconds and sock is not None and hasattr(sock, "settimeout"):
        sock.settimeout(seconds)
