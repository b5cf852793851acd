"""Running under gunicorn: configuration values and the per-worker hooks.

``gunicorn.conf.py`` re-exports this module, and ``mpackhub serve`` feeds the
same values to gunicorn programmatically, so both ways of starting behave
alike. The app is loaded in each worker after the fork (never preloaded), so
database connections and job threads are born in the worker that uses them.
Logging goes through ``mpack.http.logs.GunicornJsonLogger``: one JSON object
per line on stderr; the access line records the path without its query
string, so signed-URL signatures never reach a log.

Metrics: ``config_values()`` points ``PROMETHEUS_MULTIPROC_DIR`` at
``<home>/metrics`` (unless set) before anything imports ``prometheus_client``
— which chooses its multiprocess mode once, on first import — so every
worker writes its values to files there; the master empties the directory
when it starts (``on_starting``) and tells prometheus_client about each worker
that exits (``child_exit``). This module therefore imports neither the app
nor the hub at the top: gunicorn loads them in the workers.
"""
from __future__ import annotations

import os
import sys

from gunicorn.app.base import BaseApplication
from gunicorn.util import import_app

from mpack.http.logs import GunicornJsonLogger
from mpack.hub.settings import METRICS_DIR_VAR, metrics_dir_from_env

WSGI_APP = "app:get_app()"


def prepare_metrics_dir(environ=os.environ) -> str:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` (default ``<home>/metrics``) in ``environ`` and create it."""
    path = metrics_dir_from_env(environ)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    environ[METRICS_DIR_VAR] = str(path)
    return str(path)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def config_values() -> dict[str, object]:
    threads = _env_int("MPACKHUB_THREADS", 4)
    prepare_metrics_dir()
    return {
        "bind": os.environ.get("MPACKHUB_BIND", "127.0.0.1:8000"),
        "workers": _env_int("MPACKHUB_WORKERS", 2),
        "threads": threads,
        "worker_class": "mpack.http.worker.BalancedThreadWorker" if threads > 1 else "sync",
        "wsgi_app": WSGI_APP,
        "preload_app": False,
        "timeout": 120,
        "graceful_timeout": 30,
        # Every line on stderr is one JSON object (mpack/http/logs.py): gunicorn's own
        # lines, the access lines (with the request id, without the query string) and the app's.
        "logger_class": GunicornJsonLogger,
        "loglevel": os.environ.get("MPACKHUB_LOG_LEVEL", "info").strip().lower() or "info",
        "accesslog": "-",
        "errorlog": "-",
        # gunicorn 23+ opens a control socket under $HOME by default; several hubs on one
        # host (and the tests) would share it. Management goes through signals instead.
        "control_socket_disable": True,
        "on_starting": on_starting,
        "post_fork": post_fork,
        "worker_exit": worker_exit,
        "child_exit": child_exit,
    }


def on_starting(server) -> None:
    """In the master, before any worker forks: forget the metric files of an earlier run."""
    path = metrics_dir_from_env(os.environ)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)


def child_exit(server, worker) -> None:
    """In the master, after a worker died: drop its live-gauge files (its counters stay counted)."""
    # Imported here, not at the top: prometheus_client picks its mode on first import,
    # which must come after config_values() has set PROMETHEUS_MULTIPROC_DIR.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, str(metrics_dir_from_env(os.environ)))


def post_fork(server, worker) -> None:
    """Load the app in the new worker (gunicorn caches it for the worker), make the store's
    directories (``Store.create_layout``: a stat each once made) and start its job pool."""
    hub = worker.app.wsgi().hub
    hub.store.create_layout()
    hub.start_pool()


def worker_exit(server, worker) -> None:
    """Drain the job pool: running jobs finish, unclaimed ones stay pending for others."""
    wsgi = getattr(worker, "wsgi", None)
    if wsgi is not None and hasattr(wsgi, "hub"):
        wsgi.hub.stop_pool()


class HubServer(BaseApplication):
    """gunicorn with ``config_values()`` (``mpackhub serve``)."""

    def __init__(self, overrides: dict[str, object] | None = None) -> None:
        self.values = {**config_values(), **(overrides or {})}
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.values.items():
            if key != "wsgi_app":
                self.cfg.set(key, value)

    def load(self):
        return import_app(WSGI_APP)


def run_server() -> None:
    """``python -m mpack.http.serving``: gunicorn with ``config_values()``, in a fresh interpreter.

    ``mpackhub serve`` execs this, so that ``prometheus_client`` is first imported
    after the metrics directory is set (the CLI has imported it already).
    """
    HubServer().run()


def exec_server() -> None:
    """Replace this process by ``python -m mpack.http.serving`` (same environment)."""
    os.execv(sys.executable, [sys.executable, "-m", "mpack.http.serving"])


if __name__ == "__main__":
    run_server()
