"""Filling a hub with a synthetic history in-process, through the same domain calls a push makes."""
from __future__ import annotations

from bench.synth import Synth
from mpack.hub import auth, push, repos
from mpack.hub.models import Repo, User
from mpack.hub.services import Hub

OBJECTS_PER_CALL = 400


def owner(hub: Hub, name: str = "bench") -> User:
    return User.get_or_none(User.username == name) or auth.create_user(hub, name)[0]


def populate(hub: Hub, synth: Synth, name: str, *, batch: int = 100) -> tuple[Repo, list[str]]:
    """Push ``synth`` into a new repo ``bench/<name>`` in batches of commits → (repo, tip after each batch)."""
    repo = repos.create_repo(hub, owner(hub), name, "public")
    tips: list[str] = []
    commits: list[dict] = []
    snapshots: list[dict] = []
    for step in synth:
        objects = [{"object_id": oid, "content": data} for oid, data in step.new_blobs]
        for start in range(0, len(objects), OBJECTS_PER_CALL):
            push.receive_objects(hub, repo, {"objects": objects[start:start + OBJECTS_PER_CALL]})
        commits.append(step.commit)
        snapshots.append(step.snapshot)
        if len(commits) == batch:
            tips.append(push_batch(hub, repo, commits, snapshots))
            commits, snapshots = [], []
    if commits:
        tips.append(push_batch(hub, repo, commits, snapshots))
    return repo, tips


def push_batch(hub: Hub, repo: Repo, commits: list[dict], snapshots: list[dict], branch: str = "main") -> str:
    bundle = {"commits": list(reversed(commits)), "snapshots": snapshots, "objects": []}
    push.push(hub, repo, {"bundle": bundle, "branch": branch, "force": False})
    return commits[-1]["commit_id"]
