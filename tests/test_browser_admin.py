"""The admin page in a real browser: headless Chromium, a real gunicorn, a real login form.

Skipped where Debian's ``chromium`` is not installed, except when
``MPACKHUB_REQUIRE_BROWSER=1`` (set by ``.ci/run``): CI must run it.
The screenshot is saved under ``tests/artifacts/`` (git-ignored); its path is printed.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from bench.live_hub import live_hub, push_like_cli
from tests.browser import Browser, chromium_path, poll
from tests.factories import History

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
EVIL_ERROR = '<img src=x id="injected"> & "quotes"'


@pytest.fixture
def browser(tmp_path):
    if chromium_path() is None:
        if os.environ.get("MPACKHUB_REQUIRE_BROWSER") == "1":
            pytest.fail("MPACKHUB_REQUIRE_BROWSER=1 but chromium is not installed")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    chromium = Browser(profile)
    yield chromium
    chromium.close()


def add_failed_job(home: Path) -> None:
    """A failed job whose last error is markup: the page must show it as text."""
    with sqlite3.connect(home / "mpackhub.sqlite3", timeout=10) as db:
        db.execute("INSERT INTO background_job (job_id, repo_id, job_type, payload, status, created_at, run_after, "
                   "attempt, max_attempts, last_error, finished_at) VALUES (?, NULL, 'no.such.type', '{}', 'failed', "
                   "strftime('%s','now'), strftime('%s','now'), 5, 5, ?, strftime('%s','now'))", ("e" * 64, EVIL_ERROR))


def test_admin_page_logs_in_and_renders_in_chromium(tmp_path, browser):
    with live_hub(tmp_path / "hub", workers=2) as server:
        token = server.create_user("browser")
        server.create_repo(token, "tune")
        history = History().linear(3)
        push_like_cli(server, token, "/browser/tune", history, history.commits)
        for _ in range(3):
            assert server.call("POST", "/browser/tune/fetch/mpack", {"want": [history.tip]}).status == 200
        add_failed_job(server.home)

        browser.navigate(server.url + "/admin")
        browser.wait_for_page("/admin/login")  # redirected: no session yet
        browser.type_into("#token", "wrong-token-wrong-token")
        browser.click("#login-form button")
        poll(lambda: browser.js("document.getElementById('login-error') !== null"), what="the login error")

        browser.type_into("#token", server.admin_token)
        browser.click("#login-form button")
        browser.wait_for_page("/admin")
        assert browser.js("document.cookie") == ""  # HttpOnly: scripts cannot read the session
        assert browser.js("document.querySelector('h1').textContent").startswith("mpackhub status")
        assert "browser/tune" in browser.js("document.getElementById('repos-table').textContent")
        assert browser.js("document.getElementById('hit-rate').textContent").endswith("%")
        assert browser.js("document.getElementById('jobs-failed').textContent") == "1"
        assert browser.js("document.querySelector('#jobs-failed-table .last-error').textContent") == EVIL_ERROR
        assert browser.js("document.getElementById('injected')") is None
        assert browser.js("document.querySelectorAll('#cache-rows tbody tr').length") >= 1

        browser.click("#gc-dry-run")
        browser.wait_for_page("/admin?done=gc_dry_run")
        assert browser.js("document.getElementById('gc-run') !== null")
        assert "dry run" in browser.js("document.getElementById('gc-reports').textContent")

        browser.click("#jobs-failed-table button.retry")
        browser.wait_for_page("/admin?done=retried")
        assert "put back in the queue" in browser.js("document.getElementById('notice').textContent")

        shot = browser.screenshot(ARTIFACTS / "admin-page.png")
        print(f"admin page screenshot: {shot}")
        assert shot.stat().st_size > 10_000

        browser.click("#logout")
        browser.wait_for_page("/admin/login")
