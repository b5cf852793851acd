"""Factories for tests: real users, repos, wire calls; histories come from ``bench.history``."""
from __future__ import annotations

import hashlib
import json

import msgpack

from bench.history import History  # re-exported: the tests' history factory
from mpack.hub import auth, repos
from mpack.hub.models import Repo, User
from mpack.hub.services import Hub

MSGPACK = "application/x-msgpack"


class Clock:
    """A clock tests move by hand (epoch seconds)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fake_commit_id(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def fake_mpack_id(seed: str) -> str:
    return "sha256:" + hashlib.sha256(f"mpack-{seed}".encode()).hexdigest()


def make_user(hub: Hub, name: str = "gabriel") -> tuple[User, str]:
    return auth.create_user(hub, name)


def make_repo(hub: Hub, owner: User | None = None, name: str = "song", visibility: str = "public") -> Repo:
    if owner is None:
        owner = User.get_or_none(User.username == "gabriel") or make_user(hub)[0]
    return repos.create_repo(hub, owner, name, visibility)


def wire(app, method: str, path: str, body: dict | None = None, *, token: str | None = None, status: int | str = "*"):
    """One Muse wire call with msgpack both ways, as the CLI makes it."""
    headers = {"Accept": f"{MSGPACK}, application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if method == "GET":
        return app.get(path, headers=headers, status=status)
    headers["Content-Type"] = MSGPACK
    return app.request(path, method=method, headers=headers, body=msgpack.packb(body, use_bin_type=True),
                       status=status, expect_errors=True)


def unpack(response) -> dict:
    return msgpack.unpackb(response.body, raw=False)


def push_history(app, token: str, path: str, history: History, *, branch: str = "main",
                 commits: list[dict] | None = None, force: bool = False, chunk: int = 400, status: int = 200):
    """Push as the CLI does: filter-objects → push/objects in chunks → push."""
    bundle = history.bundle(commits, with_objects=True)
    ids_ = sorted(o["object_id"] for o in bundle["objects"])
    missing = set(unpack(wire(app, "POST", f"{path}/filter-objects", {"object_ids": ids_}, token=token, status=200))["missing"])
    objects = [o for o in bundle["objects"] if o["object_id"] in missing]
    for start in range(0, len(objects), chunk):
        wire(app, "POST", f"{path}/push/objects", {"objects": objects[start:start + chunk]}, token=token, status=200)
    bundle["objects"] = []
    return wire(app, "POST", f"{path}/push", {"bundle": bundle, "branch": branch, "force": force}, token=token, status=status)


def error_of(response, status: int) -> dict:
    """Assert an error answer: the status, a JSON ``{"error", "detail"}`` body, no traceback."""
    assert response.status_int == status, response.body[:400]
    assert response.content_type == "application/json"
    body = json.loads(response.body)
    assert set(body) == {"error", "detail"}
    assert "Traceback" not in response.text
    return body


def refuse_nul_like_postgresql(db, monkeypatch) -> None:
    """Make ``db`` (SQLite in tests) refuse NUL in a query parameter, as psycopg2 does, so that
    input reaching a query unchecked shows as the 500 it would be on PostgreSQL."""
    real = db.execute_sql

    def execute_sql(sql, params=None, *args, **kwargs):
        if any(isinstance(p, str) and "\x00" in p for p in params or ()):
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")
        return real(sql, params, *args, **kwargs)

    monkeypatch.setattr(db, "execute_sql", execute_sql)
