"""GC of the fetch-mpack cache: rows, packs, orphans, temp files, quota, jobs; POST /admin/gc; `mpackhub gc` (FMC_20).

Every test runs on a real SQLite file and a real store; time is the hand-moved
clock, and file ages are set with ``os.utime`` on the hub's own clock.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from urllib.parse import parse_qs, urlsplit

import pytest
import webtest

from app import create_app
from mpack import cli
from mpack.hub import cache, fetch, gc, jobs
from mpack.hub.bootstrap import build_hub
from mpack.hub.models import BackgroundJob, FetchMPackCache
from mpack.hub.settings import Settings
from storage.base import MPACKS, new_temp_name
from tests.database import database_url
from tests.factories import History, fake_commit_id, make_repo, make_user, push_history

DAY = 24 * 3600
PATH = "/gabriel/song"
REPORT_KEYS = {"cache_rows_deleted", "mpacks_deleted", "bytes_freed", "orphans_deleted", "quota_rows_evicted",
               "jobs_pruned", "locks_removed", "prebuilds_requeued", "dry_run", "duration_ms"}


# -- helpers ------------------------------------------------------------------------------

def set_mtime(hub, digest: str, when: float) -> None:
    os.utime(hub.store.local_path(MPACKS, digest), (when, when))


def stored_pack(hub, content: bytes, *, age: float = 30 * DAY) -> str:
    """A pack file in the store (any bytes), published ``age`` seconds ago on the hub's clock → hex digest."""
    with hub.store.new_file(MPACKS) as pending:
        pending.write(content)
        digest = pending.commit()
    set_mtime(hub, digest, hub.now() - age)
    return digest


def cache_row(hub, repo, tip: str, digest: str, *, expires_in: float, last_used_ago: float | None = None):
    """A cache row as write_row leaves it (created cache_ttl before it expires), or as hits last slid it."""
    now = hub.now()
    created = now + expires_in - hub.settings.cache_ttl
    last_used = created if last_used_ago is None else now - last_used_ago
    return FetchMPackCache.create(
        cache_id=cache.cache_id(repo.repo_id, tip), repo=repo, tip_commit_id=tip, mpack_id="sha256:" + digest,
        created_at=min(created, last_used), expires_at=now + expires_in, last_used_at=last_used,
        size=hub.store.size(MPACKS, digest),
    )


def tips_of(repo) -> set[str]:
    return {r.tip_commit_id for r in FetchMPackCache.select().where(FetchMPackCache.repo == repo)}


def get_url(app, url: str, status: int | str = "*"):
    return app.get(url.replace("http://hub.test", ""), status=status, expect_errors=True)


def url_expiry(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["expires"][0])


def counts(report: gc.GcReport) -> dict:
    return {k: v for k, v in report.as_dict().items() if k not in ("dry_run", "duration_ms")}


def old_job(hub, repo, n: int, status: str, finished_ago: float | None):
    now = hub.now()
    finished = None if finished_ago is None else now - finished_ago
    return BackgroundJob.create(job_id=jobs.compute_job_id(repo.repo_id, "test.job", str(n)), repo=repo,
                                job_type=f"test.job.{n}", payload={}, status=status, created_at=now - 30 * DAY,
                                run_after=now - 30 * DAY, finished_at=finished)


@pytest.fixture
def cover(hub, owner):
    """A second public repo of gabriel's."""
    return make_repo(hub, owner[0], "cover", "public")


@pytest.fixture
def pushed(app, owner, repo) -> History:
    history = History().linear(3)
    push_history(app, owner[1], PATH, history)
    return history


# -- FMC_20 -------------------------------------------------------------------------------

def test_fmc_20_gc_deletes_expired_rows_and_mpacks_leaves_fresh_untouched(hub, repo):
    tip_expired_a, tip_expired_b, tip_fresh = (fake_commit_id(s) for s in ("expired-a", "expired-b", "fresh"))
    mpack_expired_a = stored_pack(hub, b"pack expired-a")
    mpack_expired_b = stored_pack(hub, b"pack expired-b")
    mpack_fresh = stored_pack(hub, b"pack fresh")
    for tip, mpack, expires_in in [(tip_expired_a, mpack_expired_a, -DAY), (tip_expired_b, mpack_expired_b, -DAY),
                                   (tip_fresh, mpack_fresh, 6 * DAY)]:
        cache_row(hub, repo, tip, mpack, expires_in=expires_in)

    assert gc.gc_fetch_mpack_cache(hub, repo) == 2

    assert not hub.store.exists(MPACKS, mpack_expired_a)
    assert not hub.store.exists(MPACKS, mpack_expired_b)
    assert hub.store.exists(MPACKS, mpack_fresh)
    assert tips_of(repo) == {tip_fresh}


# -- what an unexpired URL may still fetch ------------------------------------------------

def test_a_pack_another_live_row_names_is_kept_and_its_url_works_until_it_expires(hub, app, owner, repo, cover, clock):
    history = History().linear(3)
    push_history(app, owner[1], PATH, history)
    push_history(app, owner[1], "/gabriel/cover", history)
    song = fetch.wire_fetch_mpack(hub, repo, want=[history.tip], have=[])
    clock.advance(hub.settings.cache_ttl - 3600)
    fetch.wire_fetch_mpack(hub, cover, want=[history.tip], have=[])
    clock.advance(2 * 3600)  # song's row expired an hour ago, cover's is fresh: both name one pack
    answer = fetch.wire_fetch_mpack(hub, cover, want=[history.tip], have=[])
    assert answer["mpack_id"] == song["mpack_id"]

    report = gc.run_gc(hub)

    assert (report.cache_rows_deleted, report.mpacks_deleted) == (1, 0)
    assert hub.store.exists(MPACKS, answer["mpack_id"])
    assert tips_of(repo) == set() and tips_of(cover) == {history.tip}
    clock.advance(url_expiry(answer["mpack_url"]) - hub.now())  # the URL's last valid second
    gc.run_gc(hub)
    body = get_url(app, answer["mpack_url"], status=200).body
    assert hashlib.sha256(body).hexdigest() == answer["mpack_id"][-64:]
    clock.advance(1)
    assert get_url(app, answer["mpack_url"]).status_int == 403


def test_a_url_never_outlives_the_row_it_came_from(hub, app, repo, clock):
    tip = fake_commit_id("short-lived")
    digest = stored_pack(hub, b"a pack whose row is about to expire")
    row = cache_row(hub, repo, tip, digest, expires_in=100, last_used_ago=0)  # a hit now does not write
    start = hub.now()

    answer = fetch.wire_fetch_mpack(hub, repo, want=[tip], have=[])

    expires = url_expiry(answer["mpack_url"])
    assert expires <= row.expires_at
    for moment in (expires, row.expires_at, row.expires_at + 1, row.expires_at + 3600):
        clock.advance(moment - hub.now())
        gc.run_gc(hub)
        assert get_url(app, answer["mpack_url"]).status_int == (200 if hub.now() <= expires else 403)  # never 404
    assert hub.now() > start + 3600 and not hub.store.exists(MPACKS, digest)


def test_a_multi_want_url_survives_the_expiry_of_a_tip_row_naming_the_same_pack(hub, app, repo, pushed, clock):
    first = fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])
    clock.advance(hub.settings.cache_ttl - 600)
    # A row for two wants naming the same bytes as the tip's full pack. The fetch path now
    # keys an ancestor want under the tip's own row, so this row is written as an older hub
    # did; the fetch that follows hits it, and publishing touches the file.
    wants = [pushed.tip, pushed.commits[0]["commit_id"]]
    stats = cache.PackStats(first["mpack_id"], first["size_bytes"], first["commit_count"], first["blob_count"])
    cache.write_row(hub, repo, ",".join(sorted(wants)), "", stats)
    both = fetch.wire_fetch_mpack(hub, repo, want=wants, have=[])
    assert both["cached"] is True and both["mpack_id"] == first["mpack_id"]
    set_mtime(hub, both["mpack_id"], hub.now())
    clock.advance(1200)  # the tip's row expired ten minutes ago; the URL has fifty minutes left

    report = gc.run_gc(hub)

    assert (report.cache_rows_deleted, report.mpacks_deleted) == (1, 0)
    assert get_url(app, both["mpack_url"]).status_int == 200
    clock.advance(hub.settings.effective_gc_grace + hub.settings.cache_ttl + DAY)
    gc.run_gc(hub)
    assert get_url(app, both["mpack_url"]).status_int == 403
    assert not hub.store.exists(MPACKS, both["mpack_id"])


# -- orphans and temp files ---------------------------------------------------------------

def test_a_pack_no_row_names_is_kept_for_the_grace_then_deleted(hub, repo, clock):
    orphan = stored_pack(hub, b"left by a crash", age=hub.settings.effective_gc_grace - 60)

    assert gc.run_gc(hub).orphans_deleted == 0
    assert hub.store.exists(MPACKS, orphan)
    clock.advance(3600)
    report = gc.run_gc(hub)
    assert (report.orphans_deleted, report.bytes_freed) == (1, len(b"left by a crash"))
    assert not hub.store.exists(MPACKS, orphan)


def leftover_temp(hub, age: float) -> str:
    """A temp file a build left behind when its process died, last written ``age`` seconds ago."""
    name = new_temp_name()
    path = os.path.join(hub.store.root, "tmp", name)  # the LocalStore layout: <root>/tmp/<32 hex>.tmp
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as half:
        half.write(b"half a pack")
    when = hub.now() - age
    os.utime(path, (when, when))
    return name


def test_a_temp_file_older_than_an_hour_is_removed_a_younger_one_kept(hub):
    leftover_temp(hub, gc.TEMP_GRACE + 60)
    live = leftover_temp(hub, gc.TEMP_GRACE - 60)

    assert gc.run_gc(hub).orphans_deleted == 1

    assert [name for name, _ in hub.store.iter_temp()] == [live]


# -- dry run ------------------------------------------------------------------------------

def test_a_dry_run_changes_nothing_and_reports_what_the_real_run_then_does(hub, repo, cover):
    shared = stored_pack(hub, b"shared by a live and an expired row")
    cache_row(hub, repo, fake_commit_id("a"), stored_pack(hub, b"expired a"), expires_in=-DAY)
    cache_row(hub, repo, fake_commit_id("b"), stored_pack(hub, b"expired b"), expires_in=-3600)
    cache_row(hub, repo, fake_commit_id("c"), shared, expires_in=-DAY)
    cache_row(hub, cover, fake_commit_id("c"), shared, expires_in=DAY)
    stored_pack(hub, b"an old orphan", age=hub.settings.effective_gc_grace + DAY)
    leftover_temp(hub, gc.TEMP_GRACE + 60)
    old_job(hub, repo, 1, jobs.DONE, hub.settings.job_retention + 1)
    rows_before = sorted(FetchMPackCache.select().tuples())
    files_before = list(hub.store.iter_digests(MPACKS)), list(hub.store.iter_temp())

    dry = gc.run_gc(hub, dry_run=True)

    assert sorted(FetchMPackCache.select().tuples()) == rows_before
    assert (list(hub.store.iter_digests(MPACKS)), list(hub.store.iter_temp())) == files_before
    assert BackgroundJob.select().count() == 1
    assert dry.dry_run is True
    real = gc.run_gc(hub)
    assert counts(dry) == counts(real)
    assert counts(real) == {"cache_rows_deleted": 3, "mpacks_deleted": 2, "bytes_freed": 31, "orphans_deleted": 2,
                            "quota_rows_evicted": 0, "jobs_pruned": 1, "locks_removed": 0, "prebuilds_requeued": 0}


def test_a_dry_run_of_one_repo_counts_only_what_that_repos_run_deletes(hub, repo, cover):
    shared = stored_pack(hub, b"named by two expired rows")
    cache_row(hub, repo, fake_commit_id("t"), shared, expires_in=-DAY)
    cache_row(hub, cover, fake_commit_id("t"), shared, expires_in=-DAY)

    dry = gc.run_gc(hub, repo, dry_run=True)
    real = gc.run_gc(hub, repo)

    assert counts(dry) == counts(real)
    assert (real.cache_rows_deleted, real.mpacks_deleted) == (1, 0)  # cover's row still names the file
    assert hub.store.exists(MPACKS, shared)


# -- sliding expiry -----------------------------------------------------------------------

def test_a_hit_a_minute_after_the_last_write_slides_the_expiry(hub, repo, pushed, clock):
    fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])
    written = FetchMPackCache.get(FetchMPackCache.repo == repo)
    clock.advance(30)
    fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])
    fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])

    within = FetchMPackCache.get(FetchMPackCache.repo == repo)
    assert (within.expires_at, within.last_used_at, within.hits) == (written.expires_at, written.last_used_at, 0)
    clock.advance(31)
    fetch.wire_fetch_mpack(hub, repo, want=[pushed.tip], have=[])
    slid = FetchMPackCache.get(FetchMPackCache.repo == repo)
    assert (slid.expires_at, slid.last_used_at, slid.hits) == (hub.now() + hub.settings.cache_ttl, hub.now(), 1)


# -- the byte quota -----------------------------------------------------------------------

@pytest.fixture
def quota_hub(tmp_path, clock):
    """A hub whose live cached packs may hold 250 bytes.

    Its rows live a month, so that least-recently-used rows exist to evict.
    """
    settings = Settings.for_home(tmp_path / "quota",
                                 database_url=database_url(tmp_path / "quota"), public_url="http://hub.test", job_threads=0,
                                 cache_max_bytes=250, cache_ttl=30 * DAY)
    hub = build_hub(settings, clock=clock)
    yield hub
    hub.db.close()


def lru_rows(hub, repo, last_used_ago: dict[str, float]) -> dict[str, str]:
    """One live 100-byte pack per name, last used that long ago → name → digest."""
    packs = {}
    for name, ago in last_used_ago.items():
        packs[name] = stored_pack(hub, name.encode().ljust(100, b"."), age=ago + DAY)
        cache_row(hub, repo, fake_commit_id(name), packs[name], expires_in=DAY, last_used_ago=ago)
    return packs


def test_quota_evicts_least_recently_used_rows_until_under_quota(quota_hub):
    repo = make_repo(quota_hub)
    packs = lru_rows(quota_hub, repo, {"oldest": 30 * DAY, "older": 20 * DAY, "old": 10 * DAY, "recent": 3600})

    report = gc.run_gc(quota_hub)

    assert (report.quota_rows_evicted, report.mpacks_deleted, report.bytes_freed) == (2, 2, 200)
    assert tips_of(repo) == {fake_commit_id("old"), fake_commit_id("recent")}
    assert [quota_hub.store.exists(MPACKS, packs[n]) for n in ("oldest", "older", "old")] == [False, False, True]


def test_quota_never_evicts_a_row_used_within_the_url_lifetime(quota_hub):
    repo = make_repo(quota_hub)
    longest = quota_hub.settings.url_ttl + cache.HIT_WRITE_INTERVAL  # URLs from a row last url_ttl at most
    lru_rows(quota_hub, repo, {"a": 30 * DAY, "b": 20 * DAY, "c": longest - 1, "d": 600, "e": 60})

    report = gc.run_gc(quota_hub)

    assert report.quota_rows_evicted == 2  # still over quota: c, d and e may back URLs still live
    assert tips_of(repo) == {fake_commit_id(n) for n in "cde"}


def test_quota_dry_run_counts_what_the_real_run_evicts_when_rows_share_a_pack(quota_hub):
    repo = make_repo(quota_hub)
    shared = stored_pack(quota_hub, b"s" * 150)
    cache_row(quota_hub, repo, fake_commit_id("lru"), shared, expires_in=DAY, last_used_ago=30 * DAY)
    cache_row(quota_hub, repo, fake_commit_id("hot"), shared, expires_in=DAY, last_used_ago=60)
    lru_rows(quota_hub, repo, {"next": 20 * DAY, "last": 10 * DAY})

    dry = gc.run_gc(quota_hub, dry_run=True)
    real = gc.run_gc(quota_hub)

    assert counts(dry) == counts(real)
    assert (real.quota_rows_evicted, real.mpacks_deleted) == (2, 1)  # evicting "lru" frees nothing: "hot" names it
    assert quota_hub.store.exists(MPACKS, shared)


def test_a_fetch_whose_hit_lands_after_gc_evicted_the_row_still_gets_a_working_url(quota_hub, clock, monkeypatch):
    app = webtest.TestApp(create_app(quota_hub))
    owner, token = make_user(quota_hub, "gabriel")
    repo = make_repo(quota_hub, owner, "song")
    history = History().linear(3)
    push_history(app, token, PATH, history)
    built = fetch.wire_fetch_mpack(quota_hub, repo, want=[history.tip], have=[])
    clock.advance(20 * DAY)  # unused for longer than any URL lives, yet still cached
    lru_rows(quota_hub, repo, {"b": 15 * DAY, "c": 10 * DAY})  # over quota: the tip's row goes first
    read_row = cache.fresh_row
    gc_reports = []

    def gc_runs_right_after_the_read(*args, **kwargs):
        row = read_row(*args, **kwargs)
        monkeypatch.setattr(cache, "fresh_row", read_row)
        gc_reports.append(gc.run_gc(quota_hub))  # evicts the tip's row and deletes its pack
        return row

    monkeypatch.setattr(cache, "fresh_row", gc_runs_right_after_the_read)
    answer = fetch.wire_fetch_mpack(quota_hub, repo, want=[history.tip], have=[])

    assert [r.quota_rows_evicted for r in gc_reports] == [1]  # the injected GC ran, once, and evicted the row
    response = get_url(app, answer["mpack_url"])
    assert response.status_int == 200
    assert hashlib.sha256(response.body).hexdigest() == built["mpack_id"][-64:]


@pytest.mark.parametrize("want", ["main", "tip"])
def test_quota_never_evicts_a_row_a_fetch_has_just_used(quota_hub, clock, want):
    app = webtest.TestApp(create_app(quota_hub))
    owner, token = make_user(quota_hub, "gabriel")
    repo = make_repo(quota_hub, owner, "song")
    history = History().linear(3)
    push_history(app, token, PATH, history)
    wants = [history.tip if want == "tip" else want]
    fetch.wire_fetch_mpack(quota_hub, repo, want=wants, have=[])
    clock.advance(10 * DAY)
    answer = fetch.wire_fetch_mpack(quota_hub, repo, want=wants, have=[])  # a hit: the row was just used
    lru_rows(quota_hub, repo, {"b": 20 * DAY, "c": 15 * DAY})

    report = gc.run_gc(quota_hub)

    assert report.quota_rows_evicted == 2
    assert tips_of(repo) == {history.tip}
    assert get_url(app, answer["mpack_url"]).status_int == 200


# -- room for a build at the disk's reserve (gc.make_room) --------------------------------------------

def test_make_room_drops_stale_rows_first_then_the_least_recently_used_only_as_far_as_needed(quota_hub):
    repo = make_repo(quota_hub)
    expired = stored_pack(quota_hub, b"e".ljust(100, b"."))
    cache_row(quota_hub, repo, fake_commit_id("expired"), expired, expires_in=-DAY)
    packs = lru_rows(quota_hub, repo, {"oldest": 30 * DAY, "older": 20 * DAY, "old": 10 * DAY})

    report = gc.make_room(quota_hub, 150)

    assert (report.cache_rows_deleted, report.quota_rows_evicted, report.bytes_freed) == (1, 1, 200)
    assert tips_of(repo) == {fake_commit_id("older"), fake_commit_id("old")}
    assert [quota_hub.store.exists(MPACKS, d) for d in (expired, packs["oldest"], packs["older"])] == [False, False, True]
    assert quota_hub.metrics.totals("gc_rows_deleted", "reason") == {"expired": 1.0, "room": 1.0}


def test_make_room_never_evicts_a_row_a_url_may_still_come_from(quota_hub):
    repo = make_repo(quota_hub)
    longest = quota_hub.settings.url_ttl + cache.HIT_WRITE_INTERVAL
    lru_rows(quota_hub, repo, {"idle": 30 * DAY, "recent": longest - 1, "hot": 60})

    report = gc.make_room(quota_hub, 10_000)

    assert (report.quota_rows_evicted, report.bytes_freed) == (1, 100)
    assert tips_of(repo) == {fake_commit_id("recent"), fake_commit_id("hot")}


# -- scope, idempotence, jobs -------------------------------------------------------------

def test_a_second_run_finds_nothing_to_do(hub, repo):
    cache_row(hub, repo, fake_commit_id("x"), stored_pack(hub, b"expired"), expires_in=-3600)
    stored_pack(hub, b"orphan", age=hub.settings.effective_gc_grace + DAY)
    leftover_temp(hub, gc.TEMP_GRACE + 60)
    old_job(hub, repo, 1, jobs.FAILED, hub.settings.job_retention + 1)
    assert counts(gc.run_gc(hub)) != dict.fromkeys(counts(gc.GcReport()), 0)

    assert counts(gc.run_gc(hub)) == dict.fromkeys(counts(gc.GcReport()), 0)


def test_gc_of_one_repo_touches_only_its_rows_and_sweeps_no_orphans(hub, repo, cover):
    mine = stored_pack(hub, b"song's")
    theirs = stored_pack(hub, b"cover's")
    orphan = stored_pack(hub, b"orphan", age=hub.settings.effective_gc_grace + DAY)
    cache_row(hub, repo, fake_commit_id("t"), mine, expires_in=-3600)
    cache_row(hub, cover, fake_commit_id("t"), theirs, expires_in=-3600)
    old_job(hub, repo, 1, jobs.DONE, hub.settings.job_retention + 1)

    report = gc.run_gc(hub, repo)

    assert (report.cache_rows_deleted, report.mpacks_deleted, report.orphans_deleted, report.jobs_pruned) == (1, 1, 0, 0)
    assert tips_of(repo) == set() and tips_of(cover) == {fake_commit_id("t")}
    assert [hub.store.exists(MPACKS, d) for d in (mine, theirs, orphan)] == [False, True, True]


def test_jobs_pruned_counts_finished_jobs_older_than_the_retention(hub, repo):
    retention = hub.settings.job_retention
    old_job(hub, repo, 1, jobs.DONE, retention + 1)
    old_job(hub, repo, 2, jobs.FAILED, retention + DAY)
    old_job(hub, repo, 3, jobs.DONE, retention - 60)
    old_job(hub, repo, 4, jobs.PENDING, None)

    assert gc.run_gc(hub).jobs_pruned == 2
    assert sorted(j.job_type for j in BackgroundJob.select()) == ["test.job.3", "test.job.4"]


# -- POST /admin/gc -----------------------------------------------------------------------

def admin(hub) -> dict:
    return {"Authorization": f"Bearer {hub.settings.admin_token}"}


def test_admin_gc_without_a_token_is_401_with_a_challenge(app):
    response = app.post("/admin/gc", status=401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_admin_gc_with_a_wrong_or_a_users_token_is_403(app, owner):
    app.post("/admin/gc", headers={"Authorization": "Bearer not-the-admin-token"}, status=403)
    app.post("/admin/gc", headers={"Authorization": f"Bearer {owner[1]}"}, status=403)


def test_admin_gc_reports_exactly_the_documented_fields(app, hub, repo):
    cache_row(hub, repo, fake_commit_id("x"), stored_pack(hub, b"expired"), expires_in=-3600)

    answer = app.post_json("/admin/gc", {}, headers=admin(hub), status=200).json

    assert set(answer) == REPORT_KEYS
    assert (answer["cache_rows_deleted"], answer["mpacks_deleted"], answer["dry_run"]) == (1, 1, False)


def test_admin_gc_for_one_repo(app, hub, repo, cover):
    cache_row(hub, repo, fake_commit_id("t"), stored_pack(hub, b"song's"), expires_in=-3600)
    cache_row(hub, cover, fake_commit_id("t"), stored_pack(hub, b"cover's"), expires_in=-3600)

    answer = app.post_json("/admin/gc", {"repo": "gabriel/song"}, headers=admin(hub), status=200).json

    assert answer["cache_rows_deleted"] == 1
    assert tips_of(repo) == set() and tips_of(cover) == {fake_commit_id("t")}


def test_admin_gc_of_an_unknown_repo_is_404(app, hub, repo):
    assert app.post_json("/admin/gc", {"repo": "gabriel/nope"}, headers=admin(hub), status=404).json["error"] == "repo_not_found"


@pytest.mark.parametrize("body", [{"dry_run": "yes"}, {"repo": "no-slash"}, {"repo": 7}])
def test_admin_gc_refuses_bad_fields(app, hub, body):
    assert app.post_json("/admin/gc", body, headers=admin(hub), status=400).json["error"] == "invalid_field"


def test_admin_gc_refuses_malformed_json(app, hub):
    response = app.post("/admin/gc", b"{not json", headers={**admin(hub), "Content-Type": "application/json"}, status=400)
    assert response.json["error"] == "malformed_body"


def test_admin_gc_without_a_body_runs_a_full_gc(app, hub, repo):
    cache_row(hub, repo, fake_commit_id("x"), stored_pack(hub, b"expired"), expires_in=-3600)
    stored_pack(hub, b"orphan", age=hub.settings.effective_gc_grace + DAY)

    answer = app.post("/admin/gc", headers=admin(hub), status=200).json

    assert (answer["cache_rows_deleted"], answer["orphans_deleted"], answer["dry_run"]) == (1, 1, False)


def test_admin_gc_dry_run_deletes_nothing(app, hub, repo):
    cache_row(hub, repo, fake_commit_id("x"), stored_pack(hub, b"expired"), expires_in=-3600)

    answer = app.post_json("/admin/gc", {"dry_run": True}, headers=admin(hub), status=200).json

    assert (answer["cache_rows_deleted"], answer["dry_run"]) == (1, True)
    assert tips_of(repo) == {fake_commit_id("x")}


def test_admin_gc_refuses_get(app, hub):
    app.get("/admin/gc", headers=admin(hub), status=405)


# -- `mpackhub gc` ------------------------------------------------------------------------

@pytest.fixture
def cli_logging(monkeypatch):
    """The command sets up the ``mpackhub`` logger for its process: undo that for the tests that follow."""
    logger = logging.getLogger("mpackhub")
    level = logger.level
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    yield
    logger.setLevel(level)


def test_cli_gc_dry_run_prints_the_report_as_json(hub, monkeypatch, capsys, cli_logging):
    monkeypatch.setenv("MPACKHUB_HOME", str(hub.settings.home))
    monkeypatch.setenv("MPACKHUB_DATABASE_URL", hub.settings.database_url)  # the PostgreSQL pass has no SQLite file

    assert cli.main(["gc", "--dry-run"]) == 0

    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == REPORT_KEYS and printed["dry_run"] is True
