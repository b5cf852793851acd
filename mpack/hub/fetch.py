"""The cached fetch path: ``wire_fetch_mpack`` answers with a signed URL to a stored pack.

A clone of a branch tip with a fresh cache row costs one primary-key lookup
and one HMAC: the commit walk is never entered (FMC_13). Otherwise the delta
(reachable from want, not from have) is walked, built once however many ask
at the same time, stored under its id, signed, and — for a single want —
recorded in the cache (FMC_14), keyed by the commits that bound the delta.
"""
from __future__ import annotations

import contextlib
import functools
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from mpack.format import ids, rules
from mpack.format.errors import MuseError
from mpack.hub import cache, repos
from mpack.hub.build import build_mpack
from mpack.hub.errors import BadRequest, ClientShareTaken, InvalidField, UnknownCommits
from mpack.hub.history import CommitNode, load_commits, walk_commit_delta
from mpack.hub.models import Branch, Commit, Repo, User
from mpack.hub.slots import client_key
from storage.base import MPACKS
from storage.errors import StorageError

if TYPE_CHECKING:
    from mpack.hub.build_gate import BuildGate
    from mpack.hub.services import Hub

MAX_WANTS = 10_000
MAX_HAVES = 100_000  # haves beyond these are ignored (a client may name every local commit; PROTOCOL.md)

# Module-level so that a test can observe that a cache hit never walks (FMC_13).
_walk_commit_delta = walk_commit_delta


def parse_want_have(body: dict) -> tuple[list[str], list[str]]:
    """``{"want": [...], "have": [...]}`` → (wants, haves), type-checked and bounded.

    More than ``MAX_WANTS`` wants is refused; haves past the first ``MAX_HAVES``
    are ignored, as haves the hub never saw are: the pack may then carry
    commits the client holds already, which it applies as no-ops.
    """
    want, have = body.get("want"), body.get("have", [])
    if not isinstance(want, list) or not all(isinstance(w, str) for w in want):
        raise InvalidField("want", "must be a list of branch names or commit ids")
    if not isinstance(have, list) or not all(isinstance(h, str) for h in have):
        raise InvalidField("have", "must be a list of commit ids")
    if not want:
        raise BadRequest("want is empty: name at least one branch or commit")
    if len(want) > MAX_WANTS:
        raise BadRequest(f"at most {MAX_WANTS} wants")
    return want, have[:MAX_HAVES]


def _branch_like(name: str) -> bool:
    """Only names a branch could have are looked up (PostgreSQL refuses NUL in a query).

    Not memoised: an anonymous body may name strings of up to 64 KiB, and a cache of them is memory for the taking."""
    return rules.branch_problem(name) is None


def _hit_lookup_safe(name: str) -> bool:
    """Whether a want may be looked up as a branch name by the hit query.

    A name no branch could have only finds no row there (pushes check branch
    names), so the hit path needs just the part of ``_branch_like`` a query
    needs: no NUL, a bounded length. ASCII names, nearly all of them, are
    settled with two C-level checks; any other takes the full rules.
    """
    if name.isascii():
        return "\x00" not in name and len(name) <= rules.MAX_BRANCH_BYTES
    return _branch_like(name)


def resolve_wants(repo: Repo, want: list[str], *, skip_unknown: bool = False) -> dict[str, str]:
    """Commit ids or branch names → {digest: commit_id as stored}; unknown → UnknownCommits."""
    resolved: dict[str, str] = {}
    unknown: list[str] = []
    names = [w for w in want if not ids.is_id(w) and _branch_like(w)]
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
    return _iso_second(int(epoch))


@functools.lru_cache(maxsize=8)
def _iso_second(epoch: int) -> str:
    """Every hit within one second answers the same expiry text: format it once."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def _stats_of(row) -> cache.PackStats:
    return cache.PackStats(row.mpack_id, row.size, row.commit_count, row.blob_count)


def _cache_hit(hub: Hub, repo: Repo, tip: str, base: str) -> dict | None:
    row = cache.usable_row(hub, repo, tip, base)
    if row is None or not cache.record_hit(hub, row):  # gone since read (GC): a miss
        return None
    return _answer(hub, _stats_of(row), cached=True, row=row)


def fetch_mpack(hub: Hub, owner: str, name: str, user: User | None, body: dict, *, address: str = "-") -> dict:
    """``POST /{owner}/{name}/fetch/mpack`` → as ``wire_fetch_mpack``, counted by result (``fetch_request``).

    A build it needs counts against its client's share of the request
    builders: ``user``'s, or, anonymous, the client ``address``'s (``build_gate``).

    A clone's hit — one want, a commit id or a branch name, no haves — costs
    one SELECT (``cache.hit_row``), one stat of the pack and one HMAC, and no
    ORM work (issue 8); anything else goes through ``fetch_request``. An
    unknown or hidden repository answers 404 before any complaint about the
    body, as on every route.
    """
    try:
        want, have = parse_want_have(body)
    except MuseError:
        repos.readable_repo(owner, name, user)
        raise
    if len(want) == 1 and not have:
        answer = _fast_hit(hub, owner, name, user, want[0])
        if answer is not None:
            hub.metrics.fetch("hit", bucket_url=hub.store.signs_own_urls)
            return answer
    client = client_key(user.username if user is not None else None, address)
    return fetch_request(hub, repos.readable_repo(owner, name, user), want, have, client=client)


def _fast_hit(hub: Hub, owner: str, name: str, user: User | None, want: str) -> dict | None:
    by_branch = not ids.is_id(want)
    if not repos.plausible(owner, name) or (by_branch and not _hit_lookup_safe(want)):
        return None  # never looked up (PostgreSQL refuses NUL in a query): the slow path answers
    row = cache.hit_row(hub, owner, name, want, "", by_branch=by_branch)
    if row is None or row.cache_id is None or not repos.may_read(row.owner, row.visibility, user):
        return None  # the slow path answers 404, or builds
    if row.expires_at <= hub.now() or not hub.store.still_exists(MPACKS, row.mpack_id):
        return None  # the slow path drops a row whose file is gone, and rebuilds
    if not cache.record_hit(hub, row):
        return None
    return _answer(hub, _stats_of(row), cached=True, row=row)


def fetch_request(hub: Hub, repo: Repo, want: list[str], have: list[str], *, client: str | None = None) -> dict:
    """A client's ``POST /fetch/mpack``: ``wire_fetch_mpack``, counted by result.

    ``hit``: answered from a cache row; ``miss``: a full pack built (or waited
    for); ``delta``: the same with haves; ``error``: refused or failed. The
    prebuild job calls ``wire_fetch_mpack`` directly, so builds ahead of time
    are not counted as requests.
    """
    try:
        answer = wire_fetch_mpack(hub, repo, want, have, gate=hub.build_gate, client=client)
    except Exception:
        hub.metrics.fetch("error")
        raise
    hub.metrics.fetch("hit" if answer["cached"] else "delta" if have else "miss", bucket_url=hub.store.signs_own_urls)
    return answer


def wire_fetch_mpack(hub: Hub, repo: Repo, want: list[str], have: list[str], *,
                     gate: BuildGate | None = None, client: str | None = None) -> dict:
    """→ ``{mpack_id, mpack_url, commit_count, blob_count, size_bytes, expires_at, cached}``.

    Haves the repo does not hold are dropped before anything is keyed, so made-up
    haves are a plain clone and hit the tip's row. A delta is keyed by what bounds
    its walk — its head wants and the commits just below it (``_delta_key``) —
    hashed, so different requests for the same pack share one row.
    """
    haves = parse_haves(have)
    if len(want) == 1 and ids.is_id(want[0]) and not haves:  # the clone's fast path: one primary-key lookup
        answer = _cache_hit(hub, repo, want[0], "")
        if answer is not None:
            return answer
    wants = resolve_wants(repo, want)
    known = sorted(load_commits(repo, haves)) if haves else []
    # Several wants are cached under their sorted ids joined by commas: every URL the hub
    # hands out then comes from a row, and no URL outlives its row (GC relies on it).
    asked = (",".join(sorted(wants.values())), cache.base_key(known))
    answer = _cache_hit(hub, repo, *asked)
    if answer is not None:
        return answer
    commits = _walk_commit_delta(repo, list(wants), known)
    tip, base = _delta_key(wants, commits)
    if (tip, base) != asked:
        answer = _cache_hit(hub, repo, tip, base)
        if answer is not None:
            return answer
    key = f"{repo.repo_id}\0{tip}\0{base}"
    stats, cached, row = hub.flights.do(key, lambda: _build_once(hub, repo, commits, tip, base, gate, client),
                                        unshared=ClientShareTaken)
    return _answer(hub, stats, cached=cached, row=row)


def _delta_key(wants: dict[str, str], commits: dict[str, CommitNode]) -> tuple[str, str]:
    """(tip, base) naming this delta's pack whatever the request that found it.

    The tip is the wants no other wanted commit reaches (an ancestor adds nothing);
    the base hashes the commits that bound the walk: parents of the delta outside
    it, and wants the client already has. Haves that bound nothing are not in it.
    """
    parents = {p for c in commits.values() for p in c.parents}
    heads = sorted(commit_id for digest, commit_id in wants.items() if digest in commits and digest not in parents)
    bounds = (parents - commits.keys()) | {digest for digest in wants if digest not in commits}
    return ",".join(heads) or ",".join(sorted(wants.values())), cache.base_key(bounds)


def _build_once(hub: Hub, repo: Repo, commits: dict[str, CommitNode], tip: str, base: str,
                gate: BuildGate | None, client: str | None):
    """Under the single-flight lock: another process may have built it meanwhile. A request's build
    (``gate``) holds one of the worker's request builders (within ``client``'s share) and must leave
    the disk its reserve."""
    row = cache.usable_row(hub, repo, tip, base)
    if row is not None:
        return _stats_of(row), True, row
    with gate.slot(client) if gate is not None else contextlib.nullcontext():
        for _ in range(3):
            stats = build_mpack(hub, repo, commits, check_room=gate.check_room if gate is not None else None)
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
