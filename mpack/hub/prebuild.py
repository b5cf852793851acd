"""Background prebuilds: every push leaves every branch tip packed and cached.

``enqueue_push_intel`` runs inside the push's transaction, so a push and its
prebuild job commit together. A burst of pushes to one repo merges into the one
pending job (jobs.enqueue). ``process_fetch_mpack_prebuild_job`` builds each tip
lacking a fresh cache row, and the delta from each pushed branch's previous tip,
so that both a clone and a fetch right after a push are served from storage.

A prebuild that gave up because the disk was full (``storage_full``,
``database_full``) is requeued by the repo's next push, and by GC once the
health probes show that writes work again.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from mpack.format import ids
from mpack.format.errors import InvalidId
from mpack.hub import cache, fetch, jobs
from mpack.hub.errors import UnknownCommits
from mpack.hub.models import BackgroundJob, Repo
from mpack.hub.repos import branch_heads

if TYPE_CHECKING:
    from mpack.hub.services import Hub

PREBUILD = "fetch.mpack.prebuild"

# Deltas are prepared from the last few tips a burst of pushes replaced on a branch, not from
# every one: each delta costs about the history since its tip, so a burst of N pushes would
# cost ~N²/2 commits of packs. Clients further behind get a delta built on their first fetch.
DELTA_TIPS_PER_BRANCH = 4


def merge_prebuild_payloads(old: dict, new: dict) -> dict:
    """The newer push knows the current tips; the pushes (for deltas) accumulate, a few per branch."""
    return {**old, **new, "pushes": _recent_pushes(list(old.get("pushes", [])) + list(new.get("pushes", [])))}


def _recent_pushes(pushes: list) -> list:
    """The last ``DELTA_TIPS_PER_BRANCH`` pushes of each branch, in their order."""
    kept, seen = [], {}
    for pushed in reversed(pushes):
        branch = pushed.get("branch") if isinstance(pushed, dict) else None
        seen[branch] = seen.get(branch, 0) + 1
        if seen[branch] <= DELTA_TIPS_PER_BRANCH:
            kept.append(pushed)
    return kept[::-1]


def enqueue_push_intel(hub: Hub, repo: Repo, head: str, domain_id: str | None, branch: str,
                       previous_tip: str | None = None) -> str:
    """Enqueue ``fetch.mpack.prebuild`` with the tips of all branches of ``repo`` (FMC_18)."""
    tips = list(dict.fromkeys([*branch_heads(repo).values(), head]))
    payload = {
        "tip_commit_ids": tips,
        "domain_id": domain_id,
        "pushes": [{"branch": branch, "head": head, "previous_tip": previous_tip}],
    }
    job_id = jobs.enqueue(hub, repo.repo_id, PREBUILD, payload, merge=merge_prebuild_payloads)
    retry_failed_for_space(hub, repo.repo_id)  # this push wrote: the space is back
    return job_id


FULL_DISK_CODES = {"storage_full", "database_full"}


def _merge_older(pending: dict, failed: dict) -> dict:
    """A requeued payload is older than any pending one: the pending job's tips win."""
    return merge_prebuild_payloads(failed, pending)


def retry_failed_for_space(hub: Hub, repo_id: str | None = None) -> int:
    """Requeue prebuilds that gave up on a full disk (one repo, or all) → how many.

    Call it inside the transaction of a write that just succeeded, or after a
    write probe: it assumes space is back.
    """
    requeued = 0
    for job in jobs.failed_with(hub, PREBUILD, FULL_DISK_CODES, repo_id):
        new_id = jobs.enqueue(hub, job.repo_id, PREBUILD, job.payload or {}, merge=_merge_older)
        requeued += jobs.mark_requeued(job.job_id, new_id)
    return requeued


def _build_if_stale(hub: Hub, repo: Repo, tip: str, have: list[str]) -> bool:
    """Build (tip, have) through the fetch path unless a fresh row has it → whether it built."""
    base = cache.base_key([ids.hex_of(h) for h in have])
    if cache.usable_row(hub, repo, tip, base) is not None:
        return False
    return not fetch.wire_fetch_mpack(hub, repo, want=[tip], have=have)["cached"]


def process_fetch_mpack_prebuild_job(hub: Hub, job_id: str) -> dict:
    """Build every requested tip lacking a fresh cache row, and each push's delta (FMC_07, FMC_08).

    → ``{tips_requested, tips_built, tips_skipped, tips_unknown, deltas_built}``
    """
    job = BackgroundJob.get_by_id(job_id)
    repo = Repo.get_by_id(job.repo_id)
    tips = list(dict.fromkeys(job.payload.get("tip_commit_ids") or []))
    result = {"tips_requested": len(tips), "tips_built": 0, "tips_skipped": 0, "tips_unknown": 0, "deltas_built": 0}
    for tip in tips:
        try:
            built = _build_if_stale(hub, repo, tip, [])
        except (UnknownCommits, InvalidId):
            result["tips_unknown"] += 1  # never pushed here (or malformed): nothing to build, nothing to retry
            continue
        result["tips_built" if built else "tips_skipped"] += 1
    for head, previous in _deltas_wanted(job.payload.get("pushes") or []):
        with contextlib.suppress(UnknownCommits, InvalidId):
            result["deltas_built"] += _build_if_stale(hub, repo, head, [previous])
    return result


def _deltas_wanted(pushes: list[dict]) -> list[tuple[str, str]]:
    """(latest head, earlier tip) per branch: a client holding any tip the burst replaced
    fetches the branch's current head, not an intermediate one."""
    latest: dict[str, str] = {}
    previous: dict[str, list[str]] = {}
    for pushed in pushes:
        branch, head, before = pushed.get("branch"), pushed.get("head"), pushed.get("previous_tip")
        if not isinstance(branch, str) or not isinstance(head, str):
            continue
        latest[branch] = head
        if isinstance(before, str):
            previous.setdefault(branch, []).append(before)
    return [(latest[b], p) for b, tips in previous.items()
            for p in list(dict.fromkeys(reversed(tips)))[:DELTA_TIPS_PER_BRANCH] if p != latest[b]]
