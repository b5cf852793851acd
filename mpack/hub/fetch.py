"""The cached fetch path: ``wire_fetch_mpack`` answers with a signed URL to a stored pack.

A clone of a branch tip with a fresh cache row costs one primary-key lookup
and one HMAC: the commit walk is never entered (FMC_13). Otherwise the delta
(reachable from want, not from have) is walked, built once however many ask
at the same time, stored under its id, signed, and — for a single want —
recorded in the cache (FMC_14), with the haves as part of the key.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

from mpack.format import ids
from mpack.format.errors import MuseError
from mpack.hub import cache, repos
from mpack.hub.build import build_mpack
from mpack.hub.errors import BadRequest, InvalidField, UnknownCommits
from mpack.hub.history import walk_commit_delta
from mpack.hub.models import Branch, Commit, Repo, User
from storage.base import MPACKS
from storage.errors import StorageError

if TYPE_CHECKING:
    from mpack.hub.services import Hub

MAX_WANTS = 10_000
MAX_HAVES = 1_000_000

# Module-level so that a test can observe that a cache hit never walks (FMC_13).
_walk_commit_delta = walk_commit_delta


def parse_want_have(body: dict) -> tuple[list[str], list[str]]:
    """``{"want": [...], "have": [...]}`` → (wants, haves), type-checked and bounded."""
    want, have = body.get("want"), body.get("have", [])
    if not isinstance(want, list) or not all(isinstance(w, str) for w in want):
        raise InvalidField("want", "must be a list of branch names or commit ids")
    if not isinstance(have, list) or not all(isinstance(h, str) for h in have):
        raise InvalidField("have", "must be a list of commit ids")
    if not want:
        raise BadRequest("want is empty: name at least one branch or commit")
    if len(want) > MAX_WANTS or len(have) > MAX_HAVES:
        raise BadRequest(f"at most {MAX_WANTS} wants and {MAX_HAVES} haves")
    return want, have


def resolve_wants(repo: Repo, want: list[str], *, skip_unknown: bool = False) -> dict[str, str]:
    """Commit ids or branch names → {digest: commit_id as stored}; unknown → UnknownCommits."""
    resolved: dict[str, str] = {}
    unknown: list[str] = []
    names = [w for w in want if not ids.is_id(w)]
    heads = {}
    if names:
        heads = {b.name: b.head_commit_id for b in Branch.select().where((Branch.repo == repo) & Branch.name.in_(names))}
    digests = {ids.hex_of(w): w for w in want if ids.is_id(w)}
    digests.update({ids.hex_of(h): n for n, h in heads.items()})
    rows = {r.digest: r.commit_id for r in Commit.select(Commit.digest, Commit.commit_id)
            .where((Commit.repo == repo) & Commit.digest.in_(list(digests)))} if digests else {}
    for w in want:
        digest = ids.hex_of(heads[w]) if w in heads else (ids.hex_of(w) if ids.is_id(w) else None)
        if digest in rows:
            resolved[digest] = rows[digest]
        else:
            unknown.append(w)
    if unknown and not skip_unknown:
        raise UnknownCommits(unknown)
    return resolved


def parse_haves(have: list[str]) -> list[str]:
    """Have digests; ids this hub never saw are harmless (the walk ignores them)."""
    return [ids.hex_of(ids.check_id(h, "have")) for h in have]


def _answer(hub: Hub, stats: cache.PackStats, *, cached: bool, row=None) -> dict:
    ttl = cache.url_ttl_for(hub, row)
    return {
        "mpack_id": stats.mpack_id,
        "mpack_url": hub.store.presign_mpack_get(stats.mpack_id, ttl),
        "commit_count": stats.commit_count,
        "blob_count": stats.blob_count,
        "size_bytes": stats.size,
        "expires_at": _iso(hub.now() + ttl),
        "cached": cached,
    }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), timezone.utc).isoformat()


def _stats_of(row) -> cache.PackStats:
    return cache.PackStats(row.mpack_id, row.size, row.commit_count, row.blob_count)


def _cache_hit(hub: Hub, repo: Repo, tip: str, base: str) -> dict | None:
    row = cache.usable_row(hub, repo, tip, base)
    if row is None or not cache.record_hit(hub, row):  # gone since read (GC): a miss
        return None
    return _answer(hub, _stats_of(row), cached=True, row=row)


def fetch_mpack(hub: Hub, owner: str, name: str, user: User | None, body: dict) -> dict:
    """``POST /{owner}/{name}/fetch/mpack`` → as ``wire_fetch_mpack``.

    A hit for one want — a commit id or a branch name — costs one SELECT
    (``cache.hit_row``), one HMAC and no ORM work (issue 8); anything else
    goes through ``wire_fetch_mpack``. An unknown or hidden repository
    answers 404 before any complaint about the body, as on every route.
    """
    try:
        want, have = parse_want_have(body)
        base = cache.base_key(parse_haves(have))
    except MuseError:
        repos.readable_repo(owner, name, user)
        raise
    if len(want) == 1:
        answer = _fast_hit(hub, owner, name, user, want[0], base)
        if answer is not None:
            return answer
    return wire_fetch_mpack(hub, repos.readable_repo(owner, name, user), want, have)


def _fast_hit(hub: Hub, owner: str, name: str, user: User | None, want: str, base: str) -> dict | None:
    row = cache.hit_row(hub, owner, name, want, base, by_branch=not ids.is_id(want))
    if row is None or row.cache_id is None or not repos.may_read(row.owner, row.visibility, user):
        return None  # the slow path answers 404, or builds
    if row.expires_at <= hub.now() or not hub.store.exists(MPACKS, row.mpack_id):
        return None  # the slow path drops a row whose file is gone, and rebuilds
    if not cache.record_hit(hub, row):
        return None
    return _answer(hub, _stats_of(row), cached=True, row=row)


def wire_fetch_mpack(hub: Hub, repo: Repo, want: list[str], have: list[str]) -> dict:
    """→ ``{mpack_id, mpack_url, commit_count, blob_count, size_bytes, expires_at, cached}``."""
    haves = parse_haves(have)
    base = cache.base_key(haves)
    if len(want) == 1 and ids.is_id(want[0]):  # the clone's fast path: one primary-key lookup
        answer = _cache_hit(hub, repo, want[0], base)
        if answer is not None:
            return answer
    wants = resolve_wants(repo, want)
    # Several wants are cached under their sorted ids joined by commas: every URL the hub
    # hands out then comes from a row, and no URL outlives its row (GC relies on it).
    tip = ",".join(sorted(wants.values()))
    answer = _cache_hit(hub, repo, tip, base)
    if answer is not None:
        return answer
    key = f"{repo.repo_id}\0{','.join(sorted(wants))}\0{base}"
    stats, cached, row = hub.flights.do(key, lambda: _build_once(hub, repo, wants, haves, tip, base))
    return _answer(hub, stats, cached=cached, row=row)


def _build_once(hub: Hub, repo: Repo, wants: dict[str, str], haves: list[str], tip: str, base: str):
    """Under the single-flight lock: another process may have built it meanwhile."""
    row = cache.usable_row(hub, repo, tip, base)
    if row is not None:
        return _stats_of(row), True, row
    commits = _walk_commit_delta(repo, list(wants), haves)
    for _ in range(3):
        stats = build_mpack(hub, repo, commits)
        try:
            row = cache.write_row(hub, repo, tip, base, stats)
            break
        except cache.PackVanished:  # GC removed the identical older file between commit and row
            continue
    else:
        raise StorageError(f"pack {stats.mpack_id} keeps vanishing while being cached")
    hub.log.info("mpack built", extra={"repo": repo.repo_id, "mpack_id": stats.mpack_id, "size": stats.size,
                                       "commits": stats.commit_count, "blobs": stats.blob_count})
    return stats, False, row
