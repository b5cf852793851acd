"""A new connection goes to a worker with a free thread (``mpack.http.worker.BalancedThreadWorker``).

Two gunicorn workers of two threads each share one listening socket, as
forked workers do; each runs gunicorn's own event loop, in a thread of the
test instead of a process, so that the test decides when each starts
accepting. The app holds ``/hold`` requests until the test releases them.
"""
from __future__ import annotations

import os
import selectors
import socket
import threading
from collections.abc import Iterator

import pytest
from gunicorn import glogging
from gunicorn.config import Config

from mpack.http.serving import config_values
from mpack.http.worker import BalancedThreadWorker

THREADS = 2
DEADLINE = 5.0  # for anything that should happen at once
HOLD_LIMIT = 60.0  # a held request ends by itself only this late (the test releases it long before)


class HoldingApp:
    """``/hold`` waits for ``release``; anything else answers at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = 0
        self.lock = threading.Condition()

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"] == "/hold":
            with self.lock:
                self.started += 1
                self.lock.notify_all()
            self.release.wait(HOLD_LIMIT)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    def wait_started(self, count: int, timeout: float = DEADLINE) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: self.started >= count, timeout)


class RunningWorker:
    """A worker object of gunicorn's, its event loop run in a thread."""

    def __init__(self, listener: socket.socket, app: HoldingApp) -> None:
        cfg = Config()
        cfg.set("threads", THREADS)
        cfg.set("graceful_timeout", 5)
        self.worker = BalancedThreadWorker(1, os.getppid(), [listener], None, 30, cfg, glogging.Logger(cfg))
        self.worker.wsgi = app
        # What init_process does in a forked worker, minus signals and the app's loading.
        self.worker.tpool = self.worker.get_thread_pool()
        self.worker.poller = selectors.DefaultSelector()
        self.worker.method_queue.init()
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.worker.handle_exit(None, None)
            self.thread.join(DEADLINE)
        self.worker.tmp.close()


@pytest.fixture
def app() -> Iterator[HoldingApp]:
    app = HoldingApp()
    yield app
    app.release.set()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.close()


@pytest.fixture
def workers(listener, app) -> Iterator[tuple[RunningWorker, RunningWorker]]:
    pair = (RunningWorker(listener, app), RunningWorker(listener, app))
    yield pair
    app.release.set()
    for worker in pair:
        worker.stop()


def send(listener: socket.socket, path: str) -> socket.socket:
    client = socket.create_connection(listener.getsockname(), timeout=DEADLINE)
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: hub.test\r\n\r\n".encode())
    return client


def answer(client: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"ok"):
        piece = client.recv(4096)
        if not piece:
            break
        data += piece
    return data


def test_the_hub_serves_with_the_balanced_worker():
    assert config_values()["worker_class"] == "mpack.http.worker.BalancedThreadWorker"


def test_a_worker_whose_threads_are_all_taken_leaves_new_connections_to_the_next(listener, app, workers):
    first, second = workers
    first.start()
    clients = [send(listener, "/hold") for _ in range(2 * THREADS)]
    assert app.wait_started(THREADS)
    # The first worker holds THREADS requests; plain gthread would have taken the rest too
    # and queued them behind its busy threads, with the second worker idle.
    second.start()
    assert app.wait_started(2 * THREADS), f"only {app.started} of {2 * THREADS} held requests run"
    app.release.set()
    assert all(answer(c).startswith(b"HTTP/1.1 200") for c in clients)
    for c in clients:
        c.close()


def test_idle_kept_alive_connections_do_not_stop_a_worker_accepting(listener, app, workers):
    first, _ = workers
    first.start()
    idle = []
    for _ in range(THREADS + 1):  # each answered, then left open and idle
        client = send(listener, "/quick")
        assert answer(client).startswith(b"HTTP/1.1 200")
        idle.append(client)
    late = send(listener, "/quick")
    assert answer(late).startswith(b"HTTP/1.1 200")
    for c in [*idle, late]:
        c.close()


def test_a_connection_waits_for_a_free_thread_and_is_accepted_when_one_frees(listener, app, workers):
    first, _ = workers
    first.start()
    held = [send(listener, "/hold") for _ in range(THREADS)]
    assert app.wait_started(THREADS)
    waiting = send(listener, "/quick")
    waiting.settimeout(0.2)
    with pytest.raises(TimeoutError):  # every thread is taken: nothing answers it yet
        waiting.recv(1)
    waiting.settimeout(DEADLINE)
    app.release.set()
    assert answer(waiting).startswith(b"HTTP/1.1 200")
    assert all(answer(c).startswith(b"HTTP/1.1 200") for c in held)
    for c in [*held, waiting]:
        c.close()

