"""GET /metrics: Prometheus counters recorded by the domain, gauges computed from the database at scrape time."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mpack.hub import gc, jobs, status
from mpack.hub.handlers import production_registry
from mpack.hub.metrics import HubMetrics, MetricsModeError
from mpack.hub.models import FetchMPackCache
from mpack.hub.pool import run_until_idle
from tests.factories import History, error_of, push_history, unpack, wire

PATH = "/gabriel/song"


def scrape(app, token: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of one scrape."""
    response = app.get("/metrics", headers={"Authorization": f"Bearer {token}"}, status=200)
    assert response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def fetch(app, body: dict, status: int = 200) -> dict:
    return unpack(wire(app, "POST", f"{PATH}/fetch/mpack", body, status=status))


@pytest.fixture
def admin(hub) -> str:
    return hub.settings.admin_token


@pytest.fixture
def pushed(app, owner, repo) -> History:
    history = History().linear(4)
    push_history(app, owner[1], PATH, history)
    return history


def test_metrics_need_the_admin_token(app, owner):
    assert error_of(app.get("/metrics", status=401), 401)["error"] == "unauthorized"
    app.get("/metrics", headers={"Authorization": f"Bearer {owner[1]}"}, status=403)


def test_fetches_are_counted_by_result(app, admin, pushed):
    before = scrape(app, admin)
    tip, first = pushed.tip, pushed.commits[0]["commit_id"]
    fetch(app, {"want": [tip]})  # built: miss
    fetch(app, {"want": [tip]})  # cached: hit
    fetch(app, {"want": [tip], "have": [first]})  # built with haves: delta
    wire(app, "POST", f"{PATH}/fetch/mpack", {"want": ["sha256:" + "0" * 64]}, status=404)  # error
    after = scrape(app, admin)
    for result in ("miss", "hit", "delta", "error"):
        grown = value(after, "mpackhub_fetch_requests_total", result=result) - \
            value(before, "mpackhub_fetch_requests_total", result=result)
        assert grown == 1, result
    assert value(after, "mpackhub_pack_builds_total") == 2
    assert value(after, "mpackhub_pack_build_seconds_count") == 2
    assert value(after, "mpackhub_bucket_download_urls_total") == 0  # a local store: the hub serves downloads
    assert value(after, "mpackhub_pack_build_bytes_total") > 0


def test_prebuilds_are_builds_not_fetch_requests(app, hub, admin, pushed):
    run_until_idle(hub, production_registry(), "test-worker")
    samples = scrape(app, admin)
    assert value(samples, "mpackhub_pack_builds_total") >= 1
    assert sum(value(samples, "mpackhub_fetch_requests_total", result=r) for r in ("hit", "miss", "delta", "error")) == 0


def test_download_bytes_count_what_a_get_sends(app, admin, pushed):
    answer = fetch(app, {"want": [pushed.tip]})
    path = answer["mpack_url"].replace("http://hub.test", "")
    app.get(path, status=200)
    app.get(path, headers={"Range": "bytes=0-9"}, status=206)
    app.head(path, status=200)
    samples = scrape(app, admin)
    assert value(samples, "mpackhub_download_bytes_total") == answer["size_bytes"] + 10
    assert value(samples, "mpackhub_downloads_total", kind="full") == 1
    assert value(samples, "mpackhub_downloads_total", kind="range") == 1


def test_pushes_count_results_and_bytes(app, admin, owner, repo):
    history = History().linear(2)
    push_history(app, owner[1], PATH, history)
    pushed_bytes = sum(len(content) for content in history.blobs.values() if content)
    other = History().linear(1)
    push_history(app, owner[1], PATH, other, status=409)  # not a fast-forward
    samples = scrape(app, admin)
    assert value(samples, "mpackhub_pushes_total", result="ok") == 1
    assert value(samples, "mpackhub_pushes_total", result="rejected") == 1
    assert value(samples, "mpackhub_push_bytes_total") >= pushed_bytes > 0


def test_jobs_by_status_and_queue_age_are_read_at_scrape_time(app, hub, admin, pushed, clock):
    clock.advance(30)
    samples = scrape(app, admin)
    assert value(samples, "mpackhub_jobs", status="pending", type="fetch.mpack.prebuild") == 1
    assert value(samples, "mpackhub_job_queue_age_seconds", type="fetch.mpack.prebuild") == pytest.approx(30)
    run_until_idle(hub, production_registry(), "test-worker")
    samples = scrape(app, admin)
    assert value(samples, "mpackhub_jobs", status="done", type="fetch.mpack.prebuild") == 1
    assert value(samples, "mpackhub_job_queue_age_seconds", type="fetch.mpack.prebuild") == 0
    assert value(samples, "mpackhub_job_runs_total", type="fetch.mpack.prebuild", outcome="done") == 1
    assert value(samples, "mpackhub_job_duration_seconds_count", type="fetch.mpack.prebuild") == 1
    assert value(samples, "mpackhub_cache_rows", state="fresh") == 1
    assert value(samples, "mpackhub_cache_bytes", state="fresh") > 0
    assert value(samples, "mpackhub_store_bytes", kind="blobs") > 0
    assert value(samples, "mpackhub_disk_free_bytes") > 0


def test_failed_job_attempts_are_counted(app, hub, admin):
    jobs.enqueue(hub, None, "no.such.type", {})
    run_until_idle(hub, production_registry(), "test-worker")
    samples = scrape(app, admin)
    assert value(samples, "mpackhub_jobs", status="failed", type="no.such.type") == 1
    assert value(samples, "mpackhub_job_runs_total", type="no.such.type", outcome="error") == 1


def test_gc_runs_and_what_they_free(app, hub, admin, pushed, clock):
    fetch(app, {"want": [pushed.tip]})
    clock.advance(hub.settings.cache_ttl + 3600)
    gc.run_gc(hub, dry_run=True)
    report = gc.run_gc(hub)
    samples = scrape(app, admin)
    assert value(samples, "mpackhub_gc_runs_total", mode="dry_run") == 1
    assert value(samples, "mpackhub_gc_runs_total", mode="run") == 1
    assert value(samples, "mpackhub_gc_rows_deleted_total", reason="expired") == report.cache_rows_deleted >= 1
    assert value(samples, "mpackhub_gc_bytes_freed_total") == report.bytes_freed > 0
    assert value(samples, "mpackhub_cache_rows", state="fresh") == 0


def test_each_hub_counts_for_itself(hub):
    other = HubMetrics()
    hub.metrics.fetch("hit")
    assert other.totals("fetch_requests", "result") == {}
    assert hub.metrics.totals("fetch_requests", "result") == {"hit": 1.0}


def test_a_metrics_dir_set_too_late_is_refused(tmp_path):
    # This test process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR.
    with pytest.raises(MetricsModeError):
        HubMetrics(tmp_path / "metrics")


def test_a_pack_named_by_two_rows_is_counted_once(app, hub, admin, repo):
    now = hub.now()
    for cache_id, expires in (("a" * 64, now + 100), ("b" * 64, now - 100)):
        FetchMPackCache.create(cache_id=cache_id, repo=repo, tip_commit_id=cache_id, mpack_id="sha256:" + "c" * 64,
                               created_at=now, expires_at=expires, last_used_at=now, size=1000)
    samples = scrape(app, admin)
    assert value(samples, "mpackhub_cache_rows", state="fresh") == value(samples, "mpackhub_cache_rows", state="expired") == 1
    assert value(samples, "mpackhub_cache_bytes", state="fresh") == 1000
    assert value(samples, "mpackhub_store_bytes", kind="mpacks") == 1000
    assert status.repositories(hub)[0]["cache_rows"] == 2
    assert status.repositories(hub)[0]["cache_bytes"] == 1000
