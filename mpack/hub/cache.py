"""The fetch-mpack cache: which stored pack answers (repo, tip[, haves]).

``cache_id`` is the seed's: sha256 hex of ``repo_id + tip_commit_id`` for a
full pack; a delta pack appends NUL and its base key: the sha256 hex of the
sorted digests that bound it (``base_key``), so a key has a fixed size however
many haves the request named.
Hits slide the expiry forward (at most ``cache_ttl`` from now), but write at
most once a minute per row, so that a hot tip costs reads, not writes.

``hit_row`` is the hot path of every clone and fetch: one hand-written,
parameterised SELECT that finds the repository by (owner, name), resolves a
branch name to its head in the same statement, and joins the cache row through
its ``(repo, tip_commit_id)`` index. It builds no ORM objects (peewee's query
compilation cost more than the query itself).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from mpack.format import ids
from mpack.format.layout import VERSION as FORMAT_VERSION
from mpack.hub.db import xact_lock
from mpack.hub.models import FetchMPackCache, Repo
from storage.base import MPACKS

if TYPE_CHECKING:
    from mpack.hub.services import Hub

HIT_WRITE_INTERVAL = 60.0


def base_key(bound_digests: Iterable[str]) -> str:
    """"" for a full pack; else sha256 hex of the sorted, distinct digests that bound the delta."""
    joined = ",".join(sorted(set(bound_digests)))
    return hashlib.sha256(joined.encode("ascii")).hexdigest() if joined else ""


def cache_id(repo_id: str, tip_commit_id: str, base: str = "") -> str:
    key = repo_id + tip_commit_id + (f"\0{base}" if base else "")
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PackStats:
    mpack_id: str
    size: int
    commit_count: int
    blob_count: int


def fresh_row(hub: Hub, repo: Repo, tip_commit_id: str, base: str = "") -> FetchMPackCache | None:
    """The unexpired row for this key, by primary key; None when absent, expired or of an older format.

    A pack of an older format version (cached before an upgrade) is never handed
    out: the reader refuses it. The rebuild replaces the row; GC removes the file.
    """
    row = FetchMPackCache.get_or_none(FetchMPackCache.cache_id == cache_id(repo.repo_id, tip_commit_id, base))
    if row is None or row.expires_at <= hub.now() or row.format_version != FORMAT_VERSION:
        return None
    return row


def usable_row(hub: Hub, repo: Repo, tip_commit_id: str, base: str = "") -> FetchMPackCache | None:
    """``fresh_row``, unless its pack file is gone: then the row is dropped and None returned (a miss).

    A row naming a missing file would hand out URLs answering 404 and slide its
    own expiry on every hit; dropping it makes the next build repair it.
    """
    row = fresh_row(hub, repo, tip_commit_id, base)
    if row is None or hub.store.still_exists(MPACKS, row.mpack_id):  # a bucket may answer from memory
        return row
    with hub.db.atomic():
        FetchMPackCache.delete().where((FetchMPackCache.cache_id == row.cache_id)
                                       & (FetchMPackCache.mpack_id == row.mpack_id)).execute()
    hub.log.warning("cached pack missing from storage; row dropped", extra={"repo": repo.repo_id,
                                                                           "mpack_id": row.mpack_id})
    return None


def record_hit(hub: Hub, row: FetchMPackCache) -> bool:
    """Count a hit and slide the expiry (written at most once a minute) → False if the row is gone.

    ``row`` changes only if the database did: a row GC deleted since it was read
    keeps its old expiry, so a URL priced from it still ends before GC acts.
    """
    now = hub.now()
    if now - row.last_used_at < HIT_WRITE_INTERVAL:
        return True
    expires = max(row.expires_at, now + hub.settings.cache_ttl)
    with hub.db.atomic():
        applied = FetchMPackCache.update(
            hits=FetchMPackCache.hits + 1, last_used_at=now, expires_at=expires,
        ).where(FetchMPackCache.cache_id == row.cache_id).execute()
    if applied:
        row.expires_at, row.last_used_at = expires, now
    return bool(applied)


def pack_lock(mpack_id: str) -> str:
    """The lock a cache-row write and GC's delete of the same pack take (PostgreSQL; see ``db.xact_lock``)."""
    return "mpack:" + ids.hex_of(mpack_id)


@dataclass
class HitRow:
    """A repository and, when one matched, its cache row (``cache_id`` None when no row did)."""

    repo_id: str
    owner: str
    visibility: str
    cache_id: str | None
    mpack_id: str
    size: int
    commit_count: int
    blob_count: int
    expires_at: float
    last_used_at: float


_HIT_COLUMNS = ("r.repo_id, r.owner, r.visibility, c.cache_id, c.mpack_id, c.size, c.commit_count, c.blob_count, "
                "c.expires_at, c.last_used_at")


@lru_cache(maxsize=8)
def _hit_sql(param: str, by_branch: bool) -> str:
    p = param
    tip = "b.head_commit_id" if by_branch else p
    branch = f"LEFT JOIN branch b ON b.repo_id = r.repo_id AND b.name = {p} " if by_branch else ""
    return (f"SELECT {_HIT_COLUMNS} FROM repo r {branch}"
            f"LEFT JOIN fetch_mpack_cache c ON c.repo_id = r.repo_id AND c.tip_commit_id = {tip} AND c.base = {p} "
            f"AND c.format_version = {p} WHERE r.owner = {p} AND r.name = {p}")


def hit_row(hub: Hub, owner: str, name: str, want: str, base: str, *, by_branch: bool) -> HitRow | None:
    """Repo (owner, name) and the cache row of ``want`` (a commit id as spelled, or a branch name) → None if no repo.

    One statement: the repo by its unique (owner, name) index, the branch by
    its unique (repo, name) index, the row by its (repo, tip) index — a row of
    the current pack format only (an older format's pack is never handed out).
    The row may be expired: the caller compares ``expires_at`` with its clock.
    """
    sql = _hit_sql(hub.db.param, by_branch)
    params = (want, base, FORMAT_VERSION, owner, name)
    found = hub.db.execute_sql(sql, params).fetchone()
    return None if found is None else HitRow(*found)


class PackVanished(Exception):
    """The pack was deleted (by GC) between its build and its row: build again."""


def url_ttl_for(hub: Hub, row: FetchMPackCache | None) -> int:
    """A URL never outlives the row it came from, so GC may delete a pack when its rows expire."""
    ttl = hub.settings.url_ttl
    if row is not None:
        ttl = min(ttl, int(row.expires_at - hub.now()))
    return max(ttl, 1)


def write_row(hub: Hub, repo: Repo, tip_commit_id: str, base: str, stats: PackStats) -> FetchMPackCache:
    """Insert or replace the row for this key with a fresh expiry.

    The file's existence is checked inside the write transaction; GC deletes
    files inside its own, and both hold the pack's lock (``pack_lock``), so a
    row never names a file GC has just removed. The write is one upsert, so
    two nodes writing the same key both succeed and the later row stands.
    """
    now = hub.now()
    values = dict(
        cache_id=cache_id(repo.repo_id, tip_commit_id, base), repo=repo.repo_id, tip_commit_id=tip_commit_id,
        base=base, mpack_id=stats.mpack_id, created_at=now, expires_at=now + hub.settings.cache_ttl,
        last_used_at=now, size=stats.size, commit_count=stats.commit_count, blob_count=stats.blob_count, hits=0,
        format_version=FORMAT_VERSION,
    )
    changed = {FetchMPackCache._meta.fields[name]: value for name, value in values.items() if name != "cache_id"}
    with hub.db.atomic():
        xact_lock(hub.db, pack_lock(stats.mpack_id))
        if not hub.store.exists(MPACKS, stats.mpack_id):
            raise PackVanished(stats.mpack_id)
        (FetchMPackCache.insert(**values)
         .on_conflict(conflict_target=[FetchMPackCache.cache_id], update=changed).execute())
    return FetchMPackCache(**values)
