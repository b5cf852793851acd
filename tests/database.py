"""Which database the suite runs on: SQLite files (the default) or PostgreSQL.

``MPACKHUB_TEST_DATABASE=postgresql`` runs the suite on PostgreSQL: one
throwaway cluster per session (``bench/postgres.py``; Debian's ``postgresql``
package), and a fresh database for every hub home a test opens, copied from a
template that is already migrated (``CREATE DATABASE … TEMPLATE`` is a file
copy). A home remembers its database in ``.test-database-url``, so a child
process opening the same home (multiprocessing spawn, the ``mpackhub`` command)
reaches the same database. Databases made during a test are dropped after it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpack.hub.db import open_database
from mpack.hub.migrations import migrate

BACKEND = os.environ.get("MPACKHUB_TEST_DATABASE", "sqlite").strip().lower() or "sqlite"
POSTGRES = BACKEND in ("postgresql", "postgres")
if BACKEND not in ("sqlite", "postgresql", "postgres"):
    raise RuntimeError(f"MPACKHUB_TEST_DATABASE must be sqlite or postgresql, got {BACKEND!r}")

URL_FILE = ".test-database-url"
TEMPLATE = "mpackhub_template"

_session: dict = {"cluster": None, "made": []}

only_sqlite = pytest.mark.skipif(POSTGRES, reason="about SQLite itself (files, pragmas, its write lock)")
only_postgres = pytest.mark.skipif(not POSTGRES, reason="needs MPACKHUB_TEST_DATABASE=postgresql")


def database_url(home: Path | str, *, sqlite_name: str = "mpackhub.sqlite3", empty: bool = False) -> str:
    """The database URL for a hub on ``home``: its SQLite file, or its own PostgreSQL database.

    ``empty`` gives a PostgreSQL database without the schema (the hub's default SQLite file is new anyway).
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    if not POSTGRES:
        return f"sqlite:///{home / sqlite_name}"
    remembered = home / URL_FILE
    if remembered.exists():
        return remembered.read_text().strip()
    cluster = _session["cluster"]
    if cluster is None:
        raise RuntimeError("no PostgreSQL cluster: open homes in the test process first")
    url = cluster.create_database(template=None if empty else TEMPLATE)
    _session["made"].append(url.rsplit("/", 1)[1])
    fd = os.open(remembered, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # private, as the hub keeps its home
    with os.fdopen(fd, "w") as out:
        out.write(url)
    return url


def start_cluster(base: Path):
    """Start the session's cluster with a migrated template database → the context manager to exit."""
    from bench.postgres import postgres_cluster

    manager = postgres_cluster(base)
    cluster = manager.__enter__()
    try:
        cluster.create_database(TEMPLATE)
        template = open_database(cluster.url(TEMPLATE))
        migrate(template)  # closes its connection: a template must have none when copied
    except BaseException:
        manager.__exit__(None, None, None)
        raise
    _session["cluster"] = cluster
    return manager


def cluster():
    return _session["cluster"]


def made_so_far() -> int:
    return len(_session["made"])


def drop_made(since: int) -> None:
    """Drop the databases made after ``made_so_far()`` returned ``since`` (their connections are ended).

    Those a module- or session-scoped fixture made earlier stay until the cluster goes.
    """
    made, _session["made"] = _session["made"][since:], _session["made"][:since]
    if _session["cluster"] is not None:
        for name in made:
            _session["cluster"].drop_database(name)
