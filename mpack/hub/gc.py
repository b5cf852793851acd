"""GC: expire cached packs, delete files nothing names, keep the disk bounded.

Safety rules (docs/gc.md says why):
- A URL never outlives the cache row it was issued from (cache.url_ttl_for),
  so once a row has been expired for ``EXPIRY_SLACK`` its file may go (FMC_20)
  — unless another row, of any repo, still names it. The slack absorbs the
  whole-second expiry of URLs and the clock reads between pricing a URL and
  signing it.
- Files no row names (multi-tip builds, crash leftovers) are kept for the
  grace period (default: the longest URL lifetime) plus the slack after their
  last publication, which is when a URL to them may last have been issued.
- Every row is deleted by a statement that re-checks why it may go (still
  expired, still unused), so a row refreshed or rebuilt since GC listed it
  stays. Every file is deleted inside a write transaction that first
  re-checks that no row names it (and, for orphans, its age) — up to
  ``DELETE_BATCH`` files a transaction, deleted by one ``delete_many``; cache rows are
  written inside one that checks the file exists. The two serialise (SQLite:
  one writer; PostgreSQL: both hold the pack's advisory lock), so no row ever
  names a missing file, whichever nodes they run on. Row deletes are single
  conditional statements, which PostgreSQL re-evaluates on a row another
  transaction changed meanwhile.
- The byte quota evicts least-recently-used rows, but never a row used within
  the longest URL lifetime (a URL from it may still be live).
- Prebuilds that gave up on a full disk are requeued once writes work again.
- Lock files of builds (``locks/``) that no process holds are removed.
- A dry run counts exactly what a real run would delete: the rows it would
  delete are treated as gone.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import peewee as pw

from mpack.format import ids
from mpack.hub import cache, health, job_reports, prebuild, repos
from mpack.hub.db import xact_lock
from mpack.hub.errors import DatabaseFull, InvalidField, RepoNotFound
from mpack.hub.models import FetchMPackCache, GcRun, Repo
from storage.base import MPACKS
from storage.errors import StoredObjectMissing
from storage.signing import CLOCK_SLACK

if TYPE_CHECKING:
    from mpack.hub.services import Hub

REPORTS_KEPT = 50  # GC reports kept for the admin page
TEMP_GRACE = 3600.0  # a temp file untouched for an hour belongs to a dead build
EXPIRY_SLACK = float(CLOCK_SLACK)  # how long past any expiry GC waits before acting on it
DELETE_BATCH = 100  # packs re-checked and deleted per transaction (one DeleteObjects on S3)


@dataclass
class GcReport:
    cache_rows_deleted: int = 0
    mpacks_deleted: int = 0
    bytes_freed: int = 0
    orphans_deleted: int = 0
    quota_rows_evicted: int = 0
    jobs_pruned: int = 0
    locks_removed: int = 0
    prebuilds_requeued: int = 0
    dry_run: bool = False
    duration_ms: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Gone:
    """What a dry run has counted as deleted so far (a real run deletes it instead)."""

    rows: set[str] = field(default_factory=set)  # cache ids
    packs: set[str] = field(default_factory=set)  # digests


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
    repo = repos.find_repo(owner, repo_name)
    if repo is None:
        raise RepoNotFound(owner, repo_name)
    return repo, dry_run


def _scoped(query, repo: Repo | None):
    return query if repo is None else query.where(FetchMPackCache.repo == repo)


def _named_by_a_row(mpack_id: str, gone: set[str] | frozenset[str] = frozenset()) -> bool:
    """True if a row names this pack; rows in ``gone`` (a dry run's would-be deletions) do not count."""
    names = FetchMPackCache.select(FetchMPackCache.cache_id).where(FetchMPackCache.mpack_id.in_(ids.spellings(mpack_id)))
    if not gone:
        return names.exists()
    return any(cache_id not in gone for (cache_id,) in names.tuples())


def _delete_unnamed(hub: Hub, mpack_ids: list[str], report: GcReport, gone: _Gone, *,
                    published_before: float | None = None) -> None:
    """Delete the pack files no row names (and, for orphans, published before the cutoff), in batches."""
    digests = sorted({ids.hex_of(m) for m in mpack_ids} - gone.packs)  # sorted: locks taken in one order
    for start in range(0, len(digests), DELETE_BATCH):
        _delete_batch(hub, digests[start:start + DELETE_BATCH], report, gone, published_before)


def _delete_batch(hub: Hub, digests: list[str], report: GcReport, gone: _Gone, published_before: float | None) -> None:
    """One write transaction: re-check each pack under its lock, then one batched delete (DeleteObjects on S3)."""
    doomed: dict[str, int] = {}
    with hub.db.atomic():
        for digest in digests:
            xact_lock(hub.db, cache.pack_lock(digest))
            size = _deletable_size(hub, digest, gone, published_before)
            if size is not None:
                doomed[digest] = size
        if report.dry_run:
            gone.packs.update(doomed)
        elif doomed:
            hub.store.delete_many(MPACKS, list(doomed))
    report.bytes_freed += sum(doomed.values())
    if published_before is not None:
        report.orphans_deleted += len(doomed)
    else:
        report.mpacks_deleted += len(doomed)


def _deletable_size(hub: Hub, digest: str, gone: _Gone, published_before: float | None) -> int | None:
    """The pack's size if it may go now: no row names it (and an orphan is old enough); else None."""
    if _named_by_a_row(digest, gone.rows):
        return None
    try:
        size, mtime = hub.store.stat(MPACKS, digest)
    except StoredObjectMissing:
        return None
    if published_before is not None and mtime >= published_before:
        return None  # republished since it was listed: a URL to it may have just been issued
    return size


def _stale(hub: Hub):
    """Rows expired for longer than the slack, and rows of an older pack format no URL can still use.

    Hits never hand out an older format's pack, so its last URL ends within the
    URL lifetime of its last use (``last_used_at`` lags a hit by at most a minute).
    """
    cutoff = hub.now() - EXPIRY_SLACK
    unused_since = hub.now() - hub.settings.url_ttl - cache.HIT_WRITE_INTERVAL - EXPIRY_SLACK
    outdated = (FetchMPackCache.format_version != cache.FORMAT_VERSION) & (FetchMPackCache.last_used_at < unused_since)
    return (FetchMPackCache.expires_at <= cutoff) | outdated


def _expire_rows(hub: Hub, repo: Repo | None, report: GcReport, gone: _Gone) -> set[str]:
    """Delete stale rows (expired, or of an older format and unused) → the packs they named."""
    stale = _stale(hub)
    expired = list(_scoped(FetchMPackCache.select(FetchMPackCache.cache_id, FetchMPackCache.mpack_id), repo)
                   .where(stale).tuples())
    if report.dry_run:
        report.cache_rows_deleted = len(expired)
        gone.rows.update(cache_id for cache_id, _ in expired)
    elif expired:
        with hub.db.atomic():
            for start in range(0, len(expired), 500):
                chunk = [cache_id for cache_id, _ in expired[start:start + 500]]
                # Re-checked: a row rebuilt or hit since the listing is no longer expired.
                report.cache_rows_deleted += FetchMPackCache.delete().where(
                    FetchMPackCache.cache_id.in_(chunk) & stale).execute()
    return {mpack_id for _, mpack_id in expired}


def _evict_for_quota(hub: Hub, repo: Repo | None, report: GcReport, gone: _Gone) -> set[str]:
    quota = hub.settings.cache_max_bytes
    if quota <= 0:
        return set()
    live = FetchMPackCache.select(FetchMPackCache.mpack_id, pw.fn.MAX(FetchMPackCache.size)).where(
        FetchMPackCache.expires_at > hub.now()).group_by(FetchMPackCache.mpack_id)
    return _evict_least_recent(hub, repo, report, gone, sum(size for _, size in live.tuples()) - quota)


def _evict_least_recent(hub: Hub, repo: Repo | None, report: GcReport, gone: _Gone, excess: int) -> set[str]:
    """Delete live rows, least recently used first, until ``excess`` bytes of packs are no longer named → their
    packs. Never a row used within the longest URL lifetime: a URL from it may still be live."""
    if excess <= 0:
        return set()
    now = hub.now()
    protected_since = now - hub.settings.url_ttl - cache.HIT_WRITE_INTERVAL - EXPIRY_SLACK
    unused = (FetchMPackCache.expires_at > now) & (FetchMPackCache.last_used_at < protected_since)
    candidates = _scoped(FetchMPackCache.select(), repo).where(unused).order_by(
        FetchMPackCache.last_used_at, FetchMPackCache.cache_id)
    evicted: set[str] = set()
    for row in candidates.iterator():
        if excess <= 0:
            break
        if report.dry_run:
            gone.rows.add(row.cache_id)
        elif not _delete_if(hub, (FetchMPackCache.cache_id == row.cache_id) & unused):
            continue  # used (or rebuilt) since the listing: a URL from it may be live
        if not _named_by_a_row(row.mpack_id, gone.rows):
            excess -= row.size
        report.quota_rows_evicted += 1
        evicted.add(row.mpack_id)
    return evicted


def _delete_if(hub: Hub, condition) -> int:
    with hub.db.atomic():
        return FetchMPackCache.delete().where(condition).execute()


def _sweep_orphans(hub: Hub, report: GcReport, gone: _Gone) -> None:
    cutoff = hub.now() - hub.settings.effective_gc_grace - EXPIRY_SLACK
    # A cheap first look; each is re-checked under its lock in the deleting transaction.
    old = [digest for digest, mtime in list(hub.store.iter_mtimes(MPACKS)) if mtime < cutoff]
    _delete_unnamed(hub, old, report, gone, published_before=cutoff)
    temp_cutoff = hub.now() - TEMP_GRACE
    for name, mtime in list(hub.store.iter_temp()):
        if mtime < temp_cutoff and (report.dry_run or hub.store.remove_temp(name)):
            report.orphans_deleted += 1
    # A presigned upload is adopted by the push that follows it (push.adopt_uploads): one still
    # waiting after the temp grace belongs to a client that gave up, and nothing names it.
    for name, mtime in list(hub.store.iter_incoming()):
        if mtime < temp_cutoff and (report.dry_run or hub.store.remove_incoming(name)):
            report.orphans_deleted += 1


def run_gc(hub: Hub, repo: Repo | None = None, dry_run: bool = False) -> GcReport:
    """One GC pass over one repo or all; idempotent. Orphans and jobs are swept only for all."""
    started = time.perf_counter()
    report = GcReport(dry_run=dry_run)
    gone = _Gone()
    candidates = _expire_rows(hub, repo, report, gone)
    candidates |= _evict_for_quota(hub, repo, report, gone)
    _delete_unnamed(hub, sorted(candidates), report, gone)
    if repo is None:
        _sweep_orphans(hub, report, gone)
        report.jobs_pruned = job_reports.prune_finished(hub, hub.now() - hub.settings.job_retention, dry_run=dry_run)
        if hub.flights is not None:
            report.locks_removed = hub.flights.sweep(dry_run=dry_run)
        if not dry_run and health.writable(hub):  # prebuilds that gave up on a full disk, now that it is not
            report.prebuilds_requeued = prebuild.retry_failed_for_space(hub)
    report.duration_ms = int((time.perf_counter() - started) * 1000)
    hub.log.info("gc finished", extra=report.as_dict())
    hub.metrics.gc_ran(report)
    _keep_report(hub, repo, report)
    return report


def make_room(hub: Hub, need_bytes: int) -> GcReport:
    """Free ``need_bytes`` of cached packs for a build that would otherwise eat the disk's reserve.

    What GC would do, on demand and only as far as needed: the packs of stale
    rows first, then, least recently used first, rows no live URL can come
    from (the quota's rule) — so a full cache makes way for a clone instead of
    refusing it until the next GC. Orphans, jobs and locks wait for GC. Not
    kept as a GC report; logged and counted (``mpackhub_gc_rows_deleted_total``,
    reason ``room``).
    """
    report = GcReport()
    gone = _Gone()
    _delete_unnamed(hub, sorted(_expire_rows(hub, None, report, gone)), report, gone)
    evicted = _evict_least_recent(hub, None, report, gone, need_bytes - report.bytes_freed)
    _delete_unnamed(hub, sorted(evicted), report, gone)
    hub.log.info("cache made room for a build", extra={"needed": need_bytes, **report.as_dict()})
    hub.metrics.room_made(report)
    return report


def _keep_report(hub: Hub, repo: Repo | None, report: GcReport) -> None:
    """Keep the report for the admin page; on a full database the pass still counts (it is logged)."""
    scope = "" if repo is None else f"{repo.owner}/{repo.name}"
    try:
        with hub.db.atomic():
            GcRun.create(started_at=hub.now(), scope=scope, dry_run=report.dry_run, report=report.as_dict())
            keep = GcRun.select(GcRun.id).order_by(GcRun.started_at.desc(), GcRun.id.desc()).limit(REPORTS_KEPT)
            GcRun.delete().where(GcRun.id.not_in(keep)).execute()
    except DatabaseFull:
        hub.log.warning("gc report not kept: the database is full")


def recent_reports(hub: Hub, limit: int = 10) -> list[dict]:
    """The newest GC reports: ``{started_at, scope, dry_run, report}``, newest first."""
    query = GcRun.select().order_by(GcRun.started_at.desc(), GcRun.id.desc()).limit(limit)
    return [{"id": run.id, "started_at": run.started_at, "scope": run.scope, "dry_run": run.dry_run,
             "report": run.report} for run in query]


def gc_fetch_mpack_cache(hub: Hub, repo: Repo | None = None, dry_run: bool = False) -> int:
    """Delete expired cache rows (one repo or all) and the packs no live row names → rows deleted (FMC_20).

    ``run_gc`` returns the full report.
    """
    return run_gc(hub, repo, dry_run).cache_rows_deleted
