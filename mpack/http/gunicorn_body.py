"""Reading a request body through gunicorn's own request objects, where that saves work.

Two shortcuts ``bodies.Intake`` takes under gunicorn (27) and nowhere else:
``taken_as_arrived`` takes a small body gunicorn already read with the headers
from its buffer; ``receive_into`` receives a large body straight into its
final buffer with ``recv_into``. Both need gunicorn's request internals (a
body of known length not yet read, its reader and its read-ahead buffer),
check every one before use, and answer "not possible" otherwise, so that any
other server, or another gunicorn, keeps the ``wsgi.input`` path.
"""
from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol

import falcon

from mpack.hub.errors import BodyTimeout, MalformedBody


class Watch(Protocol):
    """What ``receive_into`` needs of the body's deadline (``bodies._Watch``)."""

    sock: socket.socket | None
    timeout: float
    received: int
    expired: bool

    def next_piece(self, now: float, wanted: int) -> int: ...


def _unread_body(req: falcon.Request, length: int) -> tuple | None:
    """gunicorn's ``(Body, LengthReader, Unreader)`` of a body of ``length`` bytes none of which was read yet
    → None under any other server, or once reading began (then only ``wsgi.input`` knows where it is)."""
    stream = req.env.get("wsgi.input")
    reader = getattr(stream, "reader", None)
    unreader = getattr(reader, "unreader", None)
    if (type(reader).__name__ != "LengthReader" or getattr(reader, "length", None) != length
            or getattr(getattr(stream, "buf", None), "tell", lambda: 1)() != 0
            or not hasattr(unreader, "take_buffered") or not hasattr(unreader, "unread")):
        return None
    return stream, reader, unreader


def taken_as_arrived(req: falcon.Request, length: int) -> bytes | None:
    """The whole body, if gunicorn already holds it (read with the headers) → else None, nothing taken.

    Such a body waits on no client: it needs no reader slot and no deadline.
    A cache hit's ~100-byte body arrives this way, in the headers' packet.
    """
    unread = _unread_body(req, length)
    if unread is None:
        return None
    _, reader, unreader = unread
    held = unreader.take_buffered()
    if len(held) < length:
        if held:
            unreader.unread(held)
        return None
    if len(held) > length:  # the start of a pipelined request: gunicorn reads it next
        unreader.unread(held[length:])
        held = held[:length]
    reader.length = 0
    return held


def receive_into(req: falcon.Request, watch: Watch, body: bytearray, clock: Callable[[], float]) -> bool:
    """Fill ``body`` straight from gunicorn's socket → False where that is not possible (then nothing was read).

    Read through ``wsgi.input``, each byte of a body was copied four times on its
    way (recv, gunicorn's read-ahead buffer, its ``getvalue``, its slice) before
    ours. ``recv_into`` puts each byte in place once: a 16 MB push/objects of
    stored objects took 51–69 ms of server time instead of 61–74 ms on a
    machine whose memory copies ran at ~1 GB/s. It needs gunicorn's request
    internals (a body of known length not yet read, its socket, and
    ``take_buffered`` for the bytes that arrived with the headers); anything
    else keeps the ``wsgi.input`` path.
    """
    sock, unread = watch.sock, _unread_body(req, len(body))
    if sock is None or unread is None:
        return False
    stream, reader, unreader = unread
    length, view = len(body), memoryview(body)
    held = unreader.take_buffered()
    if len(held) > length:  # the start of a pipelined request: gunicorn reads it next
        unreader.unread(held[length:])
    received = watch.received = min(len(held), length)
    view[:received] = held[:received]
    late = f"the request body did not arrive within {watch.timeout:g} s"
    try:
        while received < length:
            wanted = watch.next_piece(clock(), length - received)
            try:
                got = sock.recv_into(view[received:received + wanted])
            except OSError as exc:  # a reset, or the watchdog's shutdown mid-read
                if watch.expired:
                    raise BodyTimeout(late) from None
                raise MalformedBody(f"the request body could not be read ({type(exc).__name__})") from None
            if watch.expired:
                raise BodyTimeout(late)
            if not got:
                raise MalformedBody(f"the request body ended after {received} of {length} bytes")
            received = watch.received = received + got
    except BaseException:
        stream.failed = True  # where the next request starts is unknown: gunicorn closes the connection
        raise
    finally:
        reader.length = length - received  # what gunicorn still has to skip before the next request
    return True
