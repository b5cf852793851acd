"""Factories for tests: real users, repos, histories with correct Muse ids, wire calls."""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import msgpack

from mpack.format import ids
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


@dataclass
class History:
    """A Muse history built in memory: commit records, snapshots and blobs with real ids."""

    prefix: str = ""  # "" for bare hex ids (the CLI), "sha256:" for the newer spelling
    files: dict[str, str] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)
    snapshots: dict[str, dict] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    _tick: itertools.count = field(default_factory=itertools.count)

    def blob(self, content: bytes) -> str:
        object_id = self.prefix + ids.object_digest(content)
        self.blobs[object_id] = content
        return object_id

    def commit(self, changes: dict[str, bytes | None] | None = None, *, parents: list[str] | None = None,
               message: str | None = None, files: dict[str, str] | None = None) -> dict:
        """A commit on top of ``parents`` (default: the last commit) applying ``changes``."""
        n = next(self._tick)
        if parents is None:
            parents = [self.commits[-1]["commit_id"]] if self.commits else []
        manifest = dict(self.files if files is None else files)
        for path, content in (changes if changes is not None else {f"file{n}.txt": f"content {n}\n".encode()}).items():
            if content is None:
                manifest.pop(path, None)
            else:
                manifest[path] = self.blob(content)
        snapshot_id = self.prefix + ids.snapshot_digest(manifest)
        committed_at = (datetime(2026, 11, 24, tzinfo=timezone.utc) + timedelta(seconds=n, microseconds=n)).isoformat()
        message = message or f"commit {n}"
        record = {
            "commit_id": self.prefix + ids.commit_digest(parents, snapshot_id, message, committed_at),
            "repo_id": "test", "branch": "main", "snapshot_id": snapshot_id, "message": message,
            "committed_at": committed_at, "parent_commit_id": parents[0] if parents else None,
            "parent2_commit_id": parents[1] if len(parents) > 1 else None, "author": "gabriel",
            "metadata": {"n": str(n)},
        }
        self.snapshots[snapshot_id] = {"snapshot_id": snapshot_id, "manifest": manifest, "created_at": committed_at}
        self.commits.append(record)
        self.files = manifest
        return record

    def linear(self, count: int) -> History:
        for _ in range(count):
            self.commit()
        return self

    @property
    def tip(self) -> str:
        return self.commits[-1]["commit_id"]

    def bundle(self, commits: list[dict] | None = None, *, with_objects: bool = True) -> dict:
        """A push bundle as the CLI builds it: commits tip-first, their snapshots, their new blobs."""
        commits = list(reversed(commits if commits is not None else self.commits))
        snapshots = [self.snapshots[c["snapshot_id"]] for c in commits]
        wanted = {o for s in snapshots for o in s["manifest"].values()}
        objects = [{"object_id": o, "content": self.blobs[o]} for o in sorted(wanted)] if with_objects else []
        return {"commits": commits, "snapshots": snapshots, "objects": objects}


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
