"""GC: expire cached packs, delete files nothing names, keep the disk bounded.

Safety rules (docs/gc.md says why):
- A URL never outlives the cache row it was issued from (cache.url_ttl_for),
  so once a row has expired its file may go at once (FMC_20) — unless another
  live row, of any repo, still names it.
- Files no row names (multi-tip builds, crash leftovers) are kept for the
  grace period (default: the longest URL lifetime) after their last
  publication, which is when a URL to them may last have been issued.
- Every file is deleted inside a write transaction that first re-checks that
  no row names it; cache rows are written inside one that checks the file
  exists. The two serialise, so no row ever names a missing file.
- The byte quota evicts least-recently-used rows, but never a row used within
  the longest URL lifetime (a URL from it may still be live).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import peewee as pw

from mpack import cache, ids, jobs
from mpack.errors import InvalidField, RepoNotFound
from mpack.models import FetchMPackCache, Repo
from storage.base import MPACKS

if TYPE_CHECKING:
    from mpack.hub import Hub

TEMP_GRACE = 3600.0  # a temp file untouched for an hour belongs to a dead build


@dataclass
class GcReport:
    cache_rows_deleted: int = 0
    mpacks_deleted: int = 0
    bytes_freed: int = 0
    orphans_deleted: int = 0
    quota_rows_evicted: int = 0
    jobs_pruned: int = 0
    dry_run: bool = False
    duration_ms: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def parse_request(body: dict) -> tuple[Repo | None, bool]:
    """``{"repo": "owner/name"?, "dry_run": bool?}`` → (repo or None, dry_run)."""
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidField("dry_run", "must be a boolean")
    name = body.get("repo")
    if name is None:
        return None, dry_run
    if not isinstance(name, str) or name.count("/") != 1:
        raise InvalidField("repo", "must be 'owner/name'")
    owner, repo_name = name.split("/")
    repo = Repo.get_or_none((Repo.owner == owner) & (Repo.name == repo_name))
    if repo is None:
        raise RepoNotFound(owner, repo_name)
    return repo, dry_run


def _scoped(query, repo: Repo | None):
    return query if repo is None else query.where(FetchMPackCache.repo == repo)


def _named_by_a_row(mpack_id: str) -> bool:
    spellings = ids.spellings(mpack_id)
    return FetchMPackCache.select().where(FetchMPackCache.mpack_id.in_(spellings)).exists()


def _delete_unnamed(hub: Hub, mpack_id: str, report: GcReport, *, orphan: bool = False) -> None:
    """Delete a pack file if no row names it (checked inside the write transaction)."""
    digest = ids.hex_of(mpack_id)
    with hub.db.atomic():
        if _named_by_a_row(digest) or not hub.store.exists(MPACKS, digest):
            return
        size = hub.store.size(MPACKS, digest)
        if not report.dry_run:
            hub.store.delete(MPACKS, digest)
    report.bytes_freed += size
    if orphan:
        report.orphans_deleted += 1
    else:
        report.mpacks_deleted += 1


def _expire_rows(hub: Hub, repo: Repo | None, report: GcReport) -> set[str]:
    now = hub.now()
    expired = list(_scoped(FetchMPackCache.select(FetchMPackCache.cache_id, FetchMPackCache.mpack_id), repo)
                   .where(FetchMPackCache.expires_at <= now).tuples())
    report.cache_rows_deleted = len(expired)
    if expired and not report.dry_run:
        with hub.db.atomic():
            for start in range(0, len(expired), 500):
                chunk = [cache_id for cache_id, _ in expired[start:start + 500]]
                FetchMPackCache.delete().where(FetchMPackCache.cache_id.in_(chunk)).execute()
    return {mpack_id for _, mpack_id in expired}


def _evict_for_quota(hub: Hub, repo: Repo | None, report: GcReport, gone: set[str]) -> set[str]:
    quota = hub.settings.cache_max_bytes
    if quota <= 0:
        return set()
    now = hub.now()
    live = FetchMPackCache.select(FetchMPackCache.mpack_id, pw.fn.MAX(FetchMPackCache.size)).where(
        FetchMPackCache.expires_at > now).group_by(FetchMPackCache.mpack_id)
    total = sum(size for _, size in live.tuples())
    if total <= quota:
        return set()
    protected_since = now - hub.settings.url_ttl_max - cache.HIT_WRITE_INTERVAL
    candidates = _scoped(FetchMPackCache.select(), repo).where(
        (FetchMPackCache.expires_at > now) & (FetchMPackCache.last_used_at < protected_since)
    ).order_by(FetchMPackCache.last_used_at, FetchMPackCache.cache_id)
    evicted: set[str] = set()
    for row in candidates.iterator():
        if total <= quota:
            break
        if not report.dry_run:
            with hub.db.atomic():
                FetchMPackCache.delete().where(FetchMPackCache.cache_id == row.cache_id).execute()
            if not _named_by_a_row(row.mpack_id):
                total -= row.size
        elif row.mpack_id not in evicted:
            total -= row.size
        report.quota_rows_evicted += 1
        evicted.add(row.mpack_id)
    return evicted


def _sweep_orphans(hub: Hub, report: GcReport) -> None:
    cutoff = hub.now() - hub.settings.effective_gc_grace
    for digest in list(hub.store.iter_digests(MPACKS)):
        _, mtime = hub.store.stat(MPACKS, digest)
        if mtime < cutoff:
            _delete_unnamed(hub, digest, report, orphan=True)
    temp_cutoff = hub.now() - TEMP_GRACE
    for name, mtime in list(hub.store.iter_temp()):
        if mtime < temp_cutoff and (report.dry_run or hub.store.remove_temp(name)):
            report.orphans_deleted += 1


def run_gc(hub: Hub, repo: Repo | None = None, dry_run: bool = False) -> GcReport:
    """One GC pass over one repo or all; idempotent. Orphans and jobs are swept only for all."""
    started = time.perf_counter()
    report = GcReport(dry_run=dry_run)
    candidates = _expire_rows(hub, repo, report)
    candidates |= _evict_for_quota(hub, repo, report, candidates)
    for mpack_id in sorted(candidates):
        if dry_run:
            _count_if_unnamed_after_expiry(hub, mpack_id, report)
        else:
            _delete_unnamed(hub, mpack_id, report)
    if repo is None:
        _sweep_orphans(hub, report)
        report.jobs_pruned = jobs.prune_finished(hub, hub.now() - hub.settings.job_retention, dry_run=dry_run)
    report.duration_ms = int((time.perf_counter() - started) * 1000)
    hub.log.info("gc finished", extra=report.as_dict())
    return report


def _count_if_unnamed_after_expiry(hub: Hub, mpack_id: str, report: GcReport) -> None:
    """Dry run: would this file go once the expired rows are gone?"""
    now = hub.now()
    live = FetchMPackCache.select().where(
        FetchMPackCache.mpack_id.in_(ids.spellings(mpack_id)) & (FetchMPackCache.expires_at > now)).exists()
    if not live and hub.store.exists(MPACKS, mpack_id):
        report.mpacks_deleted += 1
        report.bytes_freed += hub.store.size(MPACKS, mpack_id)


def gc_fetch_mpack_cache(hub: Hub, repo: Repo | None = None, dry_run: bool = False) -> int:
    """Delete expired cache rows (one repo or all) and the packs no live row names → rows deleted (FMC_20).

    ``run_gc`` returns the full report.
    """
    return run_gc(hub, repo, dry_run).cache_rows_deleted
