"""Background prebuilds: every push leaves every branch tip packed and cached.

``enqueue_push_intel`` runs inside the push's transaction, so a push and its
prebuild job commit together. A burst of pushes to one repo merges into the one
pending job (jobs.enqueue). ``process_fetch_mpack_prebuild_job`` builds each tip
lacking a fresh cache row, and the delta from each pushed branch's previous tip,
so that both a clone and a fetch right after a push are served from storage.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mpack import jobs
from mpack.models import Repo
from mpack.repos import branch_heads

if TYPE_CHECKING:
    from mpack.hub import Hub

PREBUILD = "fetch.mpack.prebuild"


def merge_prebuild_payloads(old: dict, new: dict) -> dict:
    """The newer push knows the current tips; the pushes (for deltas) accumulate."""
    return {**old, **new, "pushes": list(old.get("pushes", [])) + list(new.get("pushes", []))}


def enqueue_push_intel(hub: Hub, repo: Repo, head: str, domain_id: str | None, branch: str,
                       previous_tip: str | None = None) -> str:
    """Enqueue ``fetch.mpack.prebuild`` with the tips of all branches of ``repo`` (FMC_18)."""
    tips = list(dict.fromkeys([*branch_heads(repo).values(), head]))
    payload = {
        "tip_commit_ids": tips,
        "domain_id": domain_id,
        "pushes": [{"branch": branch, "head": head, "previous_tip": previous_tip}],
    }
    return jobs.enqueue(hub, repo.repo_id, PREBUILD, payload, merge=merge_prebuild_payloads)
