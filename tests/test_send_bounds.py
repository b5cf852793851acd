"""A download's socket under ``SendBounds``: a stall timeout on the socket, and a deadline of
``send_timeout + length / min_rate`` past which the watchdog shuts it (a client that trickles).

Real sockets (a connected pair); the watchdog's real thread. Whether a socket was shut is
read on its peer, which then sees the end of the stream.
"""
from __future__ import annotations

import socket
import time

import pytest

from mpack.http.send_timeout import SendBounds


@pytest.fixture
def pairs():
    made = []

    def pair() -> tuple[socket.socket, socket.socket]:
        made.append(socket.socketpair())
        return made[-1]

    yield pair
    for server_side, client_side in made:
        server_side.close()
        client_side.close()


def wait_for_end_of_stream(sock: socket.socket, deadline: float = 10.0) -> float:
    """Seconds until ``sock`` reads the end of the stream (its peer was shut)."""
    started = time.monotonic()
    sock.settimeout(deadline)
    assert sock.recv(1) == b""
    return time.monotonic() - started


def is_open(sock: socket.socket) -> bool:
    """Whether the peer of ``sock`` is still there: nothing to read, and no end of stream."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


def test_a_download_past_its_deadline_is_shut_and_counted(pairs):
    cuts = []
    bounds = SendBounds(0.2, 1024 * 1024, on_cut=lambda: cuts.append(1))
    server_side, client_side = pairs()
    bounds.bound({"gunicorn.socket": server_side}, 100 * 1024, "10.0.0.7")  # due in 0.2 + ~0.1 s
    assert server_side.gettimeout() == 0.2
    waited = wait_for_end_of_stream(client_side)
    assert 0.25 <= waited < 5.0
    assert cuts == [1]


def test_a_download_that_ends_before_its_deadline_is_left_alone(pairs):
    bounds = SendBounds(0.1, 1024 * 1024)
    ended_side, ended_peer = pairs()
    sentinel_side, sentinel_peer = pairs()
    done = bounds.bound({"gunicorn.socket": ended_side}, 0)
    done()
    done()  # ending twice is harmless (a stream closed twice)
    bounds.bound({"gunicorn.socket": sentinel_side}, 200 * 1024)  # due later than the first would have been
    wait_for_end_of_stream(sentinel_peer)
    assert is_open(ended_peer)


def test_a_send_timeout_of_zero_bounds_nothing(pairs):
    server_side, _ = pairs()
    done = SendBounds(0, 1024 * 1024).bound({"gunicorn.socket": server_side}, 10)
    assert server_side.gettimeout() is None
    done()


def test_a_minimum_rate_of_zero_bounds_stalls_only(pairs):
    bounds = SendBounds(0.1, 0)
    server_side, client_side = pairs()
    sentinel = SendBounds(0.1, 1024 * 1024)  # another worker's watchdog, as a clock for "long enough"
    sentinel_side, sentinel_peer = pairs()
    bounds.bound({"gunicorn.socket": server_side}, 0)
    sentinel.bound({"gunicorn.socket": sentinel_side}, 200 * 1024)
    wait_for_end_of_stream(sentinel_peer)
    assert server_side.gettimeout() == 0.1
    assert is_open(client_side)
