"""Job visibility: GET /admin/jobs and `mpackhub jobs`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.factories import History, push_history

ROOT = Path(__file__).resolve().parent.parent


def admin(hub) -> dict:
    return {"Authorization": f"Bearer {hub.settings.admin_token}"}


def test_admin_jobs_counts_by_status_and_lists_recent_jobs(app, hub, owner, repo):
    push_history(app, owner[1], "/gabriel/song", History().linear(2))
    answer = app.get("/admin/jobs", headers=admin(hub)).json
    assert answer["counts"]["pending"] == 1
    assert answer["recent"][0]["job_type"] == "fetch.mpack.prebuild"


def test_admin_jobs_needs_the_admin_token(app, owner):
    assert app.get("/admin/jobs", status=401).json["error"] == "unauthorized"
    assert app.get("/admin/jobs", headers={"Authorization": f"Bearer {owner[1]}"}, status=403).json["error"] == "forbidden"


def test_admin_jobs_refuses_post(app, hub):
    app.post("/admin/jobs", headers=admin(hub), status=405)


def mpackhub(hub, *args: str) -> subprocess.CompletedProcess:
    """The console command, in its own process, on this hub's home (as an operator runs it)."""
    env = {**os.environ, "MPACKHUB_HOME": str(hub.settings.home), "MPACKHUB_DATABASE_URL": hub.settings.database_url}
    hub.db.close()  # the test's connection must not hold SQLite's write lock meanwhile
    return subprocess.run([sys.executable, "-m", "mpack.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli_jobs_prints_counts_as_json(app, hub, owner, repo):
    push_history(app, owner[1], "/gabriel/song", History().linear(2))
    done = mpackhub(hub, "jobs", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"]["pending"] == 1


def test_cli_create_user_prints_a_working_token(app, hub):
    done = mpackhub(hub, "admin", "create-user", "alice")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    app.post_json("/api/repos", {"name": "tune"}, headers={"Authorization": f"Bearer {token}"}, status=201)


def test_cli_reports_bad_input_in_one_line(hub):
    done = mpackhub(hub, "admin", "create-user", "admin")
    assert done.returncode == 1
    assert done.stderr.startswith("mpackhub: ") and done.stderr.count("\n") == 1
