"""Repositories: creation and access rules.

A private repository is invisible to everyone but its owner: every lookup on
its behalf answers RepoNotFound (404), never 403. Only the owner writes.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import peewee as pw

from mpack.hub.errors import AlreadyExists, Forbidden, InvalidField, RepoNotFound, Unauthorized
from mpack.hub.models import Branch, Repo, User

if TYPE_CHECKING:
    from mpack.hub.services import Hub

REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
VISIBILITIES = ("public", "private")


def check_repo_name(name: object) -> str:
    if not isinstance(name, str) or not REPO_NAME.fullmatch(name) or name.endswith("."):
        raise InvalidField("name", "1-100 of A-Z a-z 0-9 _ . - starting with a letter or digit")
    return name


def create_repo(hub: Hub, owner: User, name: object, visibility: object = "public", *,
                new_id: Callable[[], str] = lambda: uuid.uuid4().hex) -> Repo:
    name = check_repo_name(name)
    if visibility not in VISIBILITIES:
        raise InvalidField("visibility", "must be 'public' or 'private'")
    try:
        with hub.db.atomic():
            return Repo.create(repo_id=new_id(), owner=owner.username, name=name,
                               visibility=visibility, created_at=hub.now())
    except pw.IntegrityError:
        raise AlreadyExists(f"repository {owner.username}/{name} already exists") from None


def plausible(owner: str, name: str) -> bool:
    """Whether ``owner/name`` could name a repo (NUL, which PostgreSQL refuses in a query,
    or any other character outside the name rules, never could): only those are looked up."""
    return bool(REPO_NAME.fullmatch(owner) and REPO_NAME.fullmatch(name))


def find_repo(owner: str, name: str) -> Repo | None:
    """The repo ``owner/name``; names no repo could have are never looked up (``plausible``)."""
    if not plausible(owner, name):
        return None
    return Repo.get_or_none((Repo.owner == owner) & (Repo.name == name))


def _lookup(owner: str, name: str) -> Repo:
    repo = find_repo(owner, name)
    if repo is None:
        raise RepoNotFound(owner, name)
    return repo


def may_read(owner: str, visibility: str, user: User | None) -> bool:
    """Whether ``user`` (None = anonymous) may read a repo of ``owner`` with this visibility."""
    return visibility == "public" or (user is not None and user.username == owner)


def readable_repo(owner: str, name: str, user: User | None) -> Repo:
    """The repo if ``user`` (None = anonymous) may read it; RepoNotFound otherwise."""
    repo = _lookup(owner, name)
    if not may_read(repo.owner, repo.visibility, user):
        raise RepoNotFound(owner, name)
    return repo


def writable_repo(owner: str, name: str, user: User | None) -> Repo:
    """The repo if ``user`` owns it: 404 unknown or private (to anyone else, anonymous
    included: existence is not revealed), then 401 anonymous, 403 public but not the owner."""
    repo = readable_repo(owner, name, user)
    if user is None:
        raise Unauthorized("pushing needs 'Authorization: Bearer <token>'")
    if user.username != repo.owner:
        raise Forbidden(f"{user.username} may not write to {owner}/{name}")
    return repo


def repo_url(hub: Hub, repo: Repo) -> str:
    return f"{hub.settings.public_url}/{repo.owner}/{repo.name}"


def describe(hub: Hub, repo: Repo) -> dict:
    return {"repo_id": repo.repo_id, "owner": repo.owner, "name": repo.name,
            "visibility": repo.visibility, "url": repo_url(hub, repo),
            "default_branch": repo.default_branch, "domain": repo.domain}


def branch_heads(repo: Repo) -> dict[str, str]:
    return {b.name: b.head_commit_id for b in Branch.select(Branch.name, Branch.head_commit_id)
            .where(Branch.repo == repo).order_by(Branch.name)}


def refs(repo: Repo) -> dict:
    """The ``GET /refs`` answer of the Muse wire protocol."""
    return {"repo_id": repo.repo_id, "domain": repo.domain,
            "default_branch": repo.default_branch or "main", "branch_heads": branch_heads(repo)}
