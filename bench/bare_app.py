"""The anchor of the hit-route benchmark: a bare Falcon route doing the least a cache hit must do.

``POST /bare`` reads a small JSON body, does one SQLite primary-key lookup
(a WAL database of 1,000 rows shaped like cache rows, one connection per
thread), signs one URL with HMAC-SHA256 and answers JSON. It runs under
gunicorn with the hub's own configuration (``mpack.http.serving.config_values``:
workers, threads, worker class, access log, logger class), minus the hub's
worker hooks, so that the only difference measured is the hub's code.

``python -m bench.bare_app DB BIND`` serves it (``bench.hit`` starts it).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import sys
import threading
import time

import falcon
from gunicorn.app.base import BaseApplication

from mpack.http.serving import config_values

SECRET = b"bare-bench-signing-key"
ROWS = 1000


def create_db(path: str) -> str:
    """A WAL database with ``ROWS`` cache-like rows; → the key of one of them."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS cache (cache_id TEXT PRIMARY KEY, mpack_id TEXT, size INTEGER, "
               "commit_count INTEGER, blob_count INTEGER, expires_at REAL)")
    rows = [(hashlib.sha256(str(n).encode()).hexdigest(), hashlib.sha256(b"p%d" % n).hexdigest(), n, n, n, 4e9)
            for n in range(ROWS)]
    db.executemany("INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    return rows[ROWS // 2][0]


class Bare:
    def __init__(self, path: str) -> None:
        self.path = path
        self.local = threading.local()

    def connection(self) -> sqlite3.Connection:
        db = getattr(self.local, "db", None)
        if db is None:
            db = self.local.db = sqlite3.connect(self.path, check_same_thread=False)
        return db

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = json.loads(req.bounded_stream.read())
        row = self.connection().execute(
            "SELECT mpack_id, size, commit_count, blob_count, expires_at FROM cache WHERE cache_id = ?",
            (body["key"],)).fetchone()
        if row is None:
            raise falcon.HTTPNotFound()
        expires = int(time.time()) + 3600
        path = "/mpacks/" + row[0]
        mac = hmac.new(SECRET, f"GET\n{path}\n{expires}".encode(), hashlib.sha256).digest()
        sig = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        resp.content_type = falcon.MEDIA_JSON
        resp.data = json.dumps({"mpack_id": row[0], "mpack_url": f"http://x{path}?expires={expires}&kid=k1&sig={sig}",
                                "size_bytes": row[1], "commit_count": row[2], "blob_count": row[3],
                                "cached": True}, separators=(",", ":")).encode()


def create_app(path: str) -> falcon.App:
    app = falcon.App()
    app.add_route("/bare", Bare(path))
    return app


class BareServer(BaseApplication):
    """gunicorn with the hub's configuration values, serving the bare app."""

    def __init__(self, path: str, bind: str) -> None:
        skip = {"wsgi_app", "post_fork", "worker_exit", "on_starting", "child_exit"}  # the hub's own hooks
        self.values = {k: v for k, v in config_values().items() if k not in skip} | {"bind": bind}
        self.path = path
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.values.items():
            self.cfg.set(key, value)

    def load(self) -> falcon.App:
        return create_app(self.path)


if __name__ == "__main__":
    BareServer(sys.argv[1], sys.argv[2]).run()
