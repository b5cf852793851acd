"""Background prebuilds: enqueue on push and the fetch.mpack.prebuild handler (FMC_07, 07b, 07c, 08, 18)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from mpack.format import ids
from mpack.hub import cache, fetch, jobs, prebuild
from mpack.hub.build import build_mpack
from mpack.hub.handlers import production_registry
from mpack.hub.history import walk_commit_delta
from mpack.hub.models import BackgroundJob, Branch, FetchMPackCache
from mpack.hub.pool import run_until_idle
from tests.factories import History, fake_commit_id, fake_mpack_id, push_history

PATH = "/gabriel/song"


class Spy:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.fn(*args, **kwargs)


@pytest.fixture
def spy(monkeypatch) -> Spy:
    """Counts the handler's calls of wire_fetch_mpack (the seed mocks it; we keep the real build)."""
    spy = Spy(fetch.wire_fetch_mpack)
    monkeypatch.setattr(fetch, "wire_fetch_mpack", spy)
    return spy


def insert_job(hub, repo, tip_commit_ids: list[str]) -> str:
    """The seed's job row, in place of the one the push enqueued (one pending job per repo and type)."""
    BackgroundJob.delete().where(BackgroundJob.repo == repo).execute()
    now = hub.now()
    job_id = jobs.compute_job_id(repo.repo_id, prebuild.PREBUILD, datetime.fromtimestamp(now, timezone.utc).isoformat())
    BackgroundJob.create(job_id=job_id, repo=repo, job_type=prebuild.PREBUILD, payload={"tip_commit_ids": tip_commit_ids},
                         status="pending", created_at=now, run_after=now, attempt=0)
    return job_id


def two_branches(app, owner) -> tuple[History, dict, dict]:
    """main and dev, pushed as the CLI would; → (history, main tip, dev tip)."""
    h = History().linear(3)
    main_tip = h.commits[-1]
    dev_tip = h.commit({"dev.txt": b"dev"}, parents=[h.commits[1]["commit_id"]])
    push_history(app, owner[1], PATH, h, commits=h.commits[:3], branch="main")
    push_history(app, owner[1], PATH, h, commits=[dev_tip], branch="dev")
    return h, main_tip, dev_tip


def pack_built_for(hub, repo, tip: str) -> str:
    """The id of the pack of everything reachable from ``tip``, built here, outside the cache."""
    return build_mpack(hub, repo, walk_commit_delta(repo, [ids.hex_of(tip)], [])).mpack_id


def rows_by_tip(repo) -> dict[str, FetchMPackCache]:
    return {r.tip_commit_id: r for r in FetchMPackCache.select().where(
        (FetchMPackCache.repo == repo) & (FetchMPackCache.base == ""))}


def test_fmc_07_builds_each_tip_and_writes_cache(hub, app, owner, repo, spy):
    _, main_tip, dev_tip = two_branches(app, owner)
    job_id = insert_job(hub, repo, [main_tip["commit_id"], dev_tip["commit_id"]])

    result = prebuild.process_fetch_mpack_prebuild_job(hub, job_id)

    assert len(spy.calls) == 2
    assert (result["tips_requested"], result["tips_built"], result["tips_skipped"]) == (2, 2, 0)
    rows = rows_by_tip(repo)
    assert set(rows) == {main_tip["commit_id"], dev_tip["commit_id"]}
    for tip, row in rows.items():
        assert row.mpack_id == pack_built_for(hub, repo, tip)  # each row names its own tip's pack
        assert hub.store.exists("mpacks", row.mpack_id)
    assert rows[main_tip["commit_id"]].mpack_id != rows[dev_tip["commit_id"]].mpack_id


def test_fmc_07b_skips_tips_with_fresh_cache(hub, app, owner, repo, spy):
    _, main_tip, dev_tip = two_branches(app, owner)
    cached_tip, new_tip = main_tip["commit_id"], dev_tip["commit_id"]
    existing = fake_mpack_id("existing")
    hub.store.put_bytes("mpacks", existing, b"mpack-existing")  # the id fake_mpack_id hashes
    now = hub.now()
    FetchMPackCache.create(cache_id=cache.cache_id(repo.repo_id, cached_tip), repo=repo, tip_commit_id=cached_tip,
                           mpack_id=existing, created_at=now, expires_at=now + 7 * 86400, last_used_at=now)
    job_id = insert_job(hub, repo, [cached_tip, new_tip])

    result = prebuild.process_fetch_mpack_prebuild_job(hub, job_id)

    assert len(spy.calls) == 1
    assert spy.calls[0]["want"] == [new_tip]
    assert (result["tips_built"], result["tips_skipped"]) == (1, 1)
    assert rows_by_tip(repo)[cached_tip].mpack_id == existing


def test_fmc_07c_empty_payload_is_a_noop(hub, repo, spy):
    job_id = insert_job(hub, repo, [])
    result = prebuild.process_fetch_mpack_prebuild_job(hub, job_id)
    assert spy.calls == []
    assert (result["tips_requested"], result["tips_built"]) == (0, 0)


def test_fmc_08_cache_row_has_correct_fields(hub, app, owner, repo):
    h = History().linear(5)
    push_history(app, owner[1], PATH, h)
    job_id = insert_job(hub, repo, [h.tip])

    run_until_idle(hub, production_registry(), "test-worker")

    row = rows_by_tip(repo)[h.tip]
    assert row.repo_id == repo.repo_id
    assert row.mpack_id == pack_built_for(hub, repo, h.tip)  # not a cache hit answering with this same row
    assert row.expires_at > hub.now()
    assert row.commit_count == 5
    job = BackgroundJob.get_by_id(job_id)
    assert job.status == "done" and job.result["tips_built"] == 1


def test_fmc_18_enqueue_push_intel_creates_prebuild_job_with_branch_tips(hub, repo):
    tip_a, tip_b = fake_commit_id("branch-main"), fake_commit_id("branch-dev")
    now = hub.now()
    Branch.create(repo=repo, name="main", head_commit_id=tip_a, updated_at=now)
    Branch.create(repo=repo, name="dev", head_commit_id=tip_b, updated_at=now)

    prebuild.enqueue_push_intel(hub, repo, head=tip_a, domain_id=None, branch="main")

    job = BackgroundJob.get((BackgroundJob.repo == repo) & (BackgroundJob.job_type == prebuild.PREBUILD)
                            & (BackgroundJob.status == "pending"))
    assert {tip_a, tip_b} <= set(job.payload["tip_commit_ids"])


def test_a_push_enqueues_one_prebuild_with_every_branch_tip(hub, app, owner, repo):
    _, main_tip, dev_tip = two_branches(app, owner)
    pending = list(BackgroundJob.select().where(BackgroundJob.status == "pending"))
    assert len(pending) == 1
    assert set(pending[0].payload["tip_commit_ids"]) == {main_tip["commit_id"], dev_tip["commit_id"]}


def test_a_burst_of_pushes_coalesces_into_one_pending_job(hub, app, owner, repo):
    h = History()
    for _ in range(5):
        h.commit()
        push_history(app, owner[1], PATH, h, commits=[h.commits[-1]])
    pending = list(BackgroundJob.select().where(BackgroundJob.status == "pending"))
    assert len(pending) == 1
    assert pending[0].payload["tip_commit_ids"] == [h.tip]
    heads = [c["commit_id"] for c in h.commits]
    assert [p["head"] for p in pending[0].payload["pushes"]] == heads[-prebuild.DELTA_TIPS_PER_BRANCH:]


def test_prebuild_prepares_the_delta_from_the_previous_tip(hub, app, owner, repo, monkeypatch):
    h = History().linear(4)
    push_history(app, owner[1], PATH, h)
    run_until_idle(hub, production_registry(), "w")
    previous = h.tip
    h.linear(2)
    push_history(app, owner[1], PATH, h, commits=h.commits[-2:])
    run_until_idle(hub, production_registry(), "w")

    monkeypatch.setattr(fetch, "build_mpack", lambda *a, **k: pytest.fail("a fetch after a prebuild must not build"))
    clone = fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[])
    update = fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[previous])
    assert clone["cached"] and update["cached"]
    assert update["commit_count"] == 2


def test_unknown_tips_are_counted_not_retried(hub, repo):
    job_id = insert_job(hub, repo, [fake_commit_id("never-pushed")])
    result = prebuild.process_fetch_mpack_prebuild_job(hub, job_id)
    assert result["tips_unknown"] == 1 and result["tips_built"] == 0


def test_a_burst_of_pushes_prepares_deltas_from_its_last_few_tips_only(hub, app, owner, repo):
    """Each delta costs the history since its tip: a burst of N pushes must not cost ~N²/2 commits of packs."""
    h = History().linear(1)
    push_history(app, owner[1], PATH, h)
    run_until_idle(hub, production_registry(), "w")
    tips = []
    for _ in range(10):
        tips.append(h.tip)
        h.linear(1)
        push_history(app, owner[1], PATH, h, commits=h.commits[-1:])
    pending = BackgroundJob.get(BackgroundJob.repo == repo, BackgroundJob.status == "pending")
    assert [p["previous_tip"] for p in pending.payload["pushes"]] == tips[-prebuild.DELTA_TIPS_PER_BRANCH:]

    result = prebuild.process_fetch_mpack_prebuild_job(hub, jobs.claim(hub, "w", 60).job_id)
    assert result["deltas_built"] == prebuild.DELTA_TIPS_PER_BRANCH
    for tip in tips[-prebuild.DELTA_TIPS_PER_BRANCH:]:
        assert fetch.wire_fetch_mpack(hub, repo, want=[h.tip], have=[tip])["cached"]
