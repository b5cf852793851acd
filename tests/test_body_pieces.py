"""How a request body is read off the socket: piece sizes that keep the deadline honest (issue 8, push speed).

gunicorn copies everything it has read ahead on every read, so the hub reads
large pieces from a fast client; a piece must still finish before the
deadline for a client that keeps the minimum rate, whose progress is what
moves the deadline (mpack/http/bodies.py).
"""
from __future__ import annotations

from mpack.http.bodies import MAX_PIECE, MIN_PIECE, _Watch

KiB = 1024


def watch(timeout: float = 10.0, min_rate: int = 64 * KiB, received: int = 0) -> _Watch:
    return _Watch(None, started=0.0, timeout=timeout, min_rate=min_rate, received=received)


def test_the_first_piece_is_what_arrives_at_the_minimum_rate_in_half_the_deadline():
    assert watch().next_piece(0.0, 1 << 30) == 64 * KiB * 5


def test_a_fast_client_is_read_a_mebibyte_at_a_time():
    assert watch(received=64 * MAX_PIECE).next_piece(0.5, 1 << 30) == MAX_PIECE


def test_near_the_deadline_pieces_shrink_to_the_smallest():
    assert watch().next_piece(9.9999, 1 << 30) == MIN_PIECE


def test_a_piece_is_never_more_than_the_rest_of_the_body():
    assert watch(received=64 * MAX_PIECE).next_piece(0.5, 1000) == 1000


def test_the_piece_in_flight_counts_as_progress():
    reading = watch(received=64 * MAX_PIECE)
    reading.next_piece(0.5, 1 << 30)
    assert reading.moving(now=(64 * MAX_PIECE + MAX_PIECE) / (64 * KiB))


def test_a_client_at_exactly_the_minimum_rate_finishes_every_piece_before_its_deadline():
    for timeout, min_rate in [(10.0, 64 * KiB), (0.5, 1024), (0.1, 1024), (2.0, 64 * KiB), (3600.0, 1024)]:
        reading, now, body = watch(timeout, min_rate), 0.0, 4 * MAX_PIECE
        while reading.received < body:
            deadline = reading.deadline()  # what the watchdog compares the clock with during the read
            piece = reading.next_piece(now, body - reading.received)
            now += piece / min_rate  # the client sends at the minimum rate, no faster
            assert now < deadline, (timeout, min_rate, reading.received)
            reading.received += piece
