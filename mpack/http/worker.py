"""The hub's gunicorn worker: gthread that accepts a connection only while one of its threads is free.

gunicorn's gthread worker accepts every connection it is woken for, up to
``worker_connections`` (1,000), and queues the requests behind its busy
threads, while the worker next to it may sit idle: all workers wait on the
same listening socket and the first to wake takes the connection. Measured
under ``wrk -t2 -c8`` against two workers of four threads: the eight
connections landed 8/0 in one run of sixteen, and that run served 1,193
requests a second against 5,100-6,300 in the others (one process doing all the
work, the other core idle). The same holds for real clients: a connection accepted by a
worker whose threads all stream packs waits for one of them, while another
worker could answer it at once.

This worker stops accepting while as many of its connections are in its
thread pool (being served, or queued for a thread) as it has threads, and
starts again when one comes back: a new connection then goes to a worker
with a free thread, or waits in the kernel's listen queue until one is free.
Kept-alive and pending connections (idle, in the poller) do not count, so
idle clients cannot make a worker stop accepting; ``worker_connections``
still bounds them as before.

It reads gunicorn 27's ``ThreadWorker`` state (``nr_conns``, the
``keepalived_conns`` and ``pending_conns`` queues, ``set_accept_enabled``);
without them it behaves as the plain gthread worker.
"""
from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker


class BalancedThreadWorker(ThreadWorker):
    """gthread that leaves new connections to other workers while its threads are all taken."""

    def _in_pool(self) -> int:
        """Connections being served or waiting for a thread (main thread only, as gunicorn's own counters)."""
        return self.nr_conns - len(self.keepalived_conns) - len(self.pending_conns)

    def _threads_taken(self) -> bool:
        try:
            return self._in_pool() >= self.cfg.threads
        except AttributeError:  # another gunicorn: no balancing
            return False

    def set_accept_enabled(self, enabled: bool) -> None:
        # gunicorn's run loop asks to accept again on every turn while it may (nr_conns below
        # worker_connections); the answer waits until a thread is free.
        super().set_accept_enabled(enabled and not self._threads_taken())

    def accept(self, listener) -> None:
        super().accept(listener)
        if self._threads_taken():
            super().set_accept_enabled(False)
