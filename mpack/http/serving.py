"""Running under gunicorn: configuration values and the per-worker hooks.

``gunicorn.conf.py`` re-exports this module, and ``mpackhub serve`` feeds the
same values to gunicorn programmatically, so both ways of starting behave
alike. The app is loaded in each worker after the fork (never preloaded), so
database connections and job threads are born in the worker that uses them.
Logging goes through ``mpack.http.logs.GunicornJsonLogger``: one JSON object
per line on stderr; the access line records the path without its query
string, so signed-URL signatures never reach a log.
"""
from __future__ import annotations

import os

from gunicorn.app.base import BaseApplication

from app import get_app
from mpack.http.logs import GunicornJsonLogger


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def config_values() -> dict[str, object]:
    threads = _env_int("MPACKHUB_THREADS", 4)
    return {
        "bind": os.environ.get("MPACKHUB_BIND", "127.0.0.1:8000"),
        "workers": _env_int("MPACKHUB_WORKERS", 2),
        "threads": threads,
        "worker_class": "gthread" if threads > 1 else "sync",
        "wsgi_app": "app:get_app()",
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
        "post_fork": post_fork,
        "worker_exit": worker_exit,
    }


def post_fork(server, worker) -> None:
    """Load the app in the new worker (gunicorn caches it for the worker) and start its job pool."""
    worker.app.wsgi().hub.start_pool()


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
        return get_app()
