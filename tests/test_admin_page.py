"""The admin status page (webtest): login, session cookie, CSRF and same-origin checks, retry, GC dry run then run."""
from __future__ import annotations

import re

import pytest
import webtest

from app import create_app
from mpack.hub import admin_session, gc, job_reports, jobs
from mpack.hub.bootstrap import build_hub
from mpack.hub.handlers import production_registry
from mpack.hub.models import BackgroundJob, FetchMPackCache
from mpack.hub.pool import run_until_idle
from mpack.hub.settings import Settings
from tests.factories import History, push_history, unpack, wire

PATH = "/gabriel/song"
EVIL_TYPE = "<script>alert(1)</script>"


def csrf_of(page) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def login(app, token: str, status: int = 303):
    return app.post("/admin/login", {"token": token}, status=status)


@pytest.fixture
def admin_app(app, hub):
    login(app, hub.settings.admin_token)
    return app


@pytest.fixture
def failed_job(hub) -> str:
    job_id = jobs.enqueue(hub, None, EVIL_TYPE, {})
    run_until_idle(hub, production_registry(), "test-worker")
    assert job_reports.get(hub, job_id).status == "failed"
    return job_id


def test_admin_page_redirects_to_the_login_form_without_a_session(app):
    response = app.get("/admin", status=303)
    assert response.location.endswith("/admin/login")
    form = app.get("/admin/login", status=200)
    assert 'type="password" name="token"' in form.text


def test_a_wrong_token_is_refused_and_sets_no_cookie(app, hub):
    response = login(app, "not-the-admin-token-at-all", status=403)
    assert "not the admin token" in response.text
    assert "Set-Cookie" not in response.headers
    app.get("/admin", status=303)


def test_login_sets_a_signed_httponly_samesite_strict_cookie(app, hub):
    response = login(app, hub.settings.admin_token)
    assert response.location.endswith("/admin")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # the public URL is http://hub.test
    value = re.match(r"mpackhub_admin=([^;]+)", cookie).group(1)
    assert hub.settings.admin_token not in value
    assert admin_session.check(hub, value).expires_at > hub.now()


def test_cookie_is_secure_when_the_public_url_is_https(tmp_path):
    hub = build_hub(Settings.for_home(tmp_path / "tls", public_url="https://hub.example", job_threads=0))
    try:
        app = webtest.TestApp(create_app(hub))
        cookie = login(app, hub.settings.admin_token).headers["Set-Cookie"]
        assert "Secure" in cookie
    finally:
        hub.db.close()


def test_forged_or_expired_sessions_are_not_sessions(app, hub, clock):
    session = admin_session.login(hub, hub.settings.admin_token)
    forged = session.value[:-1] + ("0" if session.value[-1] != "0" else "1")
    app.set_cookie("mpackhub_admin", forged)
    app.get("/admin", status=303)
    app.set_cookie("mpackhub_admin", session.value)
    app.get("/admin", status=200)
    clock.advance(admin_session.SESSION_TTL + 1)
    app.get("/admin", status=303)


def test_status_page_shows_repos_cache_jobs_disk_and_escapes_everything(admin_app, hub, owner, repo, failed_job):
    history = History().linear(3)
    push_history(admin_app, owner[1], PATH, history)
    unpack(wire(admin_app, "POST", f"{PATH}/fetch/mpack", {"want": [history.tip]}, status=200))
    unpack(wire(admin_app, "POST", f"{PATH}/fetch/mpack", {"want": [history.tip]}, status=200))
    page = admin_app.get("/admin", status=200)
    assert page.content_type == "text/html"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    for section in ('id="disk"', 'id="cache"', 'id="jobs"', 'id="repos"', 'id="gc"'):
        assert section in page.text
    assert "gabriel/song" in page.text
    assert '<strong id="hit-rate">50.0 %</strong>' in page.text
    assert '<strong id="jobs-failed">1</strong>' in page.text
    assert EVIL_TYPE not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script" not in page.text


def test_actions_need_a_session(app, failed_job):
    response = app.post("/admin/actions/retry", {"job_id": failed_job, "csrf": "x"}, status=401)
    assert response.content_type == "text/html"
    app.post("/admin/actions/gc", {"mode": "dry_run", "csrf": "x"}, status=401)
    app.post("/admin/logout", {"csrf": "x"}, status=401)


@pytest.mark.parametrize("csrf", [None, "", "0" * 64])
def test_actions_need_the_sessions_csrf_token(admin_app, hub, failed_job, csrf):
    form = {"job_id": failed_job} | ({} if csrf is None else {"csrf": csrf})
    response = admin_app.post("/admin/actions/retry", form, status=403)
    assert "CSRF" in response.text
    assert job_reports.get(hub, failed_job).status == "failed"


def test_another_sessions_csrf_token_is_refused(admin_app, hub, failed_job):
    other = admin_session.login(hub, hub.settings.admin_token)
    admin_app.post("/admin/actions/retry", {"job_id": failed_job, "csrf": other.csrf}, status=403)


@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"}, {"Origin": "null"},
                                     {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}])
def test_cross_site_posts_are_refused(admin_app, hub, failed_job, headers):
    csrf = csrf_of(admin_app.get("/admin"))
    admin_app.post("/admin/actions/retry", {"job_id": failed_job, "csrf": csrf}, headers=headers, status=403)
    assert job_reports.get(hub, failed_job).status == "failed"


def test_cross_site_login_is_refused(app, hub):
    app.post("/admin/login", {"token": hub.settings.admin_token}, headers={"Origin": "https://evil.example"}, status=403)


def test_retry_puts_a_failed_job_back_in_the_queue(admin_app, hub, failed_job):
    page = admin_app.get("/admin")
    assert 'class="retry"' in page.text
    headers = {"Origin": "http://hub.test", "Sec-Fetch-Site": "same-origin"}
    response = admin_app.post("/admin/actions/retry", {"job_id": failed_job, "csrf": csrf_of(page)},
                              headers=headers, status=303)
    assert response.location.endswith("/admin?done=retried#jobs")
    job = job_reports.get(hub, failed_job)
    assert (job.status, job.attempt, job.last_error is not None) == ("pending", 0, True)
    assert "The job was put back in the queue." in admin_app.get(response.location).text


def test_retry_of_a_job_that_is_not_failed_is_409(admin_app, hub):
    job_id = jobs.enqueue(hub, None, "some.type", {})
    csrf = csrf_of(admin_app.get("/admin"))
    admin_app.post("/admin/actions/retry", {"job_id": job_id, "csrf": csrf}, status=409)
    admin_app.post("/admin/actions/retry", {"job_id": "f" * 64, "csrf": csrf}, status=404)


def test_retry_merges_into_a_pending_job_of_the_same_kind(hub, failed_job):
    pending = jobs.enqueue(hub, None, EVIL_TYPE, {"tips": ["x"]})
    assert jobs.retry(hub, failed_job) == pending
    assert job_reports.get(hub, failed_job).status == "done"
    assert BackgroundJob.select().where(BackgroundJob.status == "pending").count() == 1


def test_gc_is_a_dry_run_first_then_a_confirmed_run(admin_app, hub, owner, repo, clock):
    history = History().linear(2)
    push_history(admin_app, owner[1], PATH, history)
    unpack(wire(admin_app, "POST", f"{PATH}/fetch/mpack", {"want": [history.tip]}, status=200))
    clock.advance(hub.settings.cache_ttl + 3600)
    login(admin_app, hub.settings.admin_token)  # the first session has expired meanwhile
    page = admin_app.get("/admin")
    assert 'id="gc-run"' not in page.text  # no real run offered before a dry run
    csrf = csrf_of(page)
    admin_app.post("/admin/actions/gc", {"mode": "dry_run", "csrf": csrf}, status=303)
    assert FetchMPackCache.select().count() == 1  # nothing deleted
    page = admin_app.get("/admin?done=gc_dry_run")
    assert 'id="gc-run"' in page.text and "dry run" in page.text
    admin_app.post("/admin/actions/gc", {"mode": "run", "csrf": csrf}, status=400)  # no confirm
    assert FetchMPackCache.select().count() == 1
    admin_app.post("/admin/actions/gc", {"mode": "run", "confirm": "yes", "csrf": csrf}, status=303)
    assert FetchMPackCache.select().count() == 0
    assert [r["dry_run"] for r in gc.recent_reports(hub)] == [False, True]


def test_bad_forms_are_400_not_500(admin_app):
    csrf = csrf_of(admin_app.get("/admin"))
    admin_app.post("/admin/actions/gc", {"mode": "everything", "csrf": csrf}, status=400)
    admin_app.post("/admin/actions/gc", params=b"\xff\xfe", content_type="application/x-www-form-urlencoded", status=400)
    admin_app.post_json("/admin/actions/gc", {"mode": "dry_run", "csrf": csrf}, status=400)


def test_logout_clears_the_cookie(admin_app):
    csrf = csrf_of(admin_app.get("/admin"))
    response = admin_app.post("/admin/logout", {"csrf": csrf}, status=303)
    assert response.headers["Set-Cookie"].startswith('mpackhub_admin=""; expires=')
    admin_app.get("/admin", status=303)


def test_cache_use_is_shown_against_the_quota(tmp_path):
    hub = build_hub(Settings.for_home(tmp_path / "quota", public_url="http://hub.test", job_threads=0,
                                      cache_max_bytes=10 * 1024 * 1024))
    try:
        app = webtest.TestApp(create_app(hub))
        login(app, hub.settings.admin_token)
        page = app.get("/admin", status=200)
        assert '<meter id="cache-meter" min="0" max="10485760" value="0"' in page.text
        assert "0 B of 10.0 MiB (0 %)" in page.text
    finally:
        hub.db.close()
