"""Job visibility: GET /admin/jobs and `mpackhub jobs`."""
from __future__ import annotations

import json

from mpack import cli
from tests.factories import History, push_history


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


def test_cli_jobs_prints_counts_as_json(app, hub, owner, repo, monkeypatch, capsys):
    push_history(app, owner[1], "/gabriel/song", History().linear(2))
    monkeypatch.setenv("MPACKHUB_HOME", str(hub.settings.home))
    assert cli.main(["jobs", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"]["pending"] == 1


def test_cli_create_user_prints_a_working_token(app, hub, monkeypatch, capsys):
    monkeypatch.setenv("MPACKHUB_HOME", str(hub.settings.home))
    assert cli.main(["admin", "create-user", "alice"]) == 0
    token = capsys.readouterr().out.strip()
    app.post_json("/api/repos", {"name": "tune"}, headers={"Authorization": f"Bearer {token}"}, status=201)


def test_cli_reports_bad_input_in_one_line(hub, monkeypatch, capsys):
    monkeypatch.setenv("MPACKHUB_HOME", str(hub.settings.home))
    assert cli.main(["admin", "create-user", "admin"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mpackhub: ") and err.count("\n") == 1
