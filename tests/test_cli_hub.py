"""`mpackhub admin|jobs|gc` cannot hit the wrong hub: --home must name an existing hub, --url a running one."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bench.live_hub import live_hub, push_like_cli
from mpack import cli
from mpack.hub.bootstrap import build_hub
from mpack.hub.settings import Settings
from tests.factories import History

SERVER_SIDE = [("admin", "create-user", "alice"), ("jobs",), ("gc",), ("gc", "--dry-run"), ("fsck",)]


def mpackhub(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The console command in its own process, from ``cwd``, with no MPACKHUB_* of the test's own."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MPACKHUB_")}
    return subprocess.run([sys.executable, "-m", "mpack.cli", *args], env={**environ, **(env or {})}, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def existing_home(tmp_path) -> Path:
    """A hub home as `mpackhub serve` leaves it (database, store, generated secrets)."""
    home = tmp_path / "hub"
    build_hub(Settings.for_home(home, job_threads=0)).db.close()
    return home


def tree(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


@pytest.mark.parametrize("command", SERVER_SIDE, ids=" ".join)
def test_no_hub_in_the_default_home_is_refused_and_none_is_created(tmp_path, command):
    clone = tmp_path / "song-copy"  # the README's old trap: `../.venv/bin/mpackhub gc` inside a clone
    clone.mkdir()
    done = mpackhub(*command, cwd=clone)
    assert done.returncode == 1
    assert done.stderr == f"mpackhub: no hub at {clone / 'var'} (no such directory); start one there with " \
                          "`mpackhub serve`, or name it with --home DIR (or MPACKHUB_HOME), or a running one with --url URL\n"
    assert done.stdout == ""
    assert tree(clone) == []


@pytest.mark.parametrize("command", SERVER_SIDE, ids=" ".join)
def test_a_home_without_a_database_is_refused_untouched(tmp_path, command):
    home = tmp_path / "not-a-hub"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    for how in (["--home", str(home)], []):
        env = {} if how else {"MPACKHUB_HOME": str(home)}
        done = mpackhub(*command, *how, cwd=tmp_path, env=env)
        assert done.returncode == 1
        assert f"no hub at {home} (no database {home / 'mpackhub.sqlite3'})" in done.stderr
    assert tree(home) == ["notes.txt"]


def test_home_comes_from_the_flag_then_the_environment_then_dot_var(tmp_path, existing_home):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    by_flag = mpackhub("admin", "create-user", "--home", str(existing_home), "ada", cwd=elsewhere,
                       env={"MPACKHUB_HOME": str(tmp_path / "wrong")})
    assert by_flag.returncode == 0, by_flag.stderr
    by_env = mpackhub("jobs", "--json", cwd=elsewhere, env={"MPACKHUB_HOME": str(existing_home)})
    assert by_env.returncode == 0, by_env.stderr
    assert set(json.loads(by_env.stdout)["counts"]) >= {"pending", "done"}
    (tmp_path / "var").symlink_to(existing_home)
    by_default = mpackhub("admin", "create-user", "bea", cwd=tmp_path)
    assert by_default.returncode == 0, by_default.stderr
    before = mpackhub("admin", "create-user", "ada", "--home", str(existing_home), cwd=elsewhere)
    assert "exists" in before.stderr  # the same hub: ada was created there by the flag
    assert tree(elsewhere) == []


def test_the_options_are_accepted_before_the_admin_subcommand_too(existing_home, tmp_path):
    done = mpackhub("admin", "--home", str(existing_home), "create-user", "cy", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mph_") or len(done.stdout.strip()) >= 16


def test_home_and_url_together_are_refused(existing_home, tmp_path):
    done = mpackhub("jobs", "--home", str(existing_home), "--url", "http://127.0.0.1:9", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == "mpackhub: --home and --url name two hubs: give one\n"


def test_url_needs_the_admin_token_and_keeps_it_off_plain_http_to_other_hosts(tmp_path):
    done = mpackhub("jobs", "--url", "http://127.0.0.1:9", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (1, "mpackhub: --url needs the admin token: --admin-token or "
                                                 "$MPACKHUB_ADMIN_TOKEN\n")
    far = mpackhub("gc", "--url", "http://hub.example:8000", cwd=tmp_path, env={"MPACKHUB_ADMIN_TOKEN": "x" * 20})
    assert far.returncode == 1
    assert "refusing to send the admin token over plain http to hub.example" in far.stderr


def test_serve_prints_second_terminal_commands_that_work_from_anywhere(existing_home, tmp_path):
    settings = Settings.for_home(existing_home)
    program = f"{shlex.quote(sys.executable)} -m mpack.cli"
    lines = cli.second_terminal(program, settings).splitlines()
    commands = [line.split("#")[0].strip() for line in lines if line.startswith("  ")]
    assert all(str(existing_home) in c or "--url" in c for c in commands)
    assert commands[-1].endswith(f"jobs --url {settings.public_url}")
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MPACKHUB_")}
    for command in commands[:-1]:
        done = subprocess.run(["bash", "-c", command.replace("NAME", "dana")], cwd=elsewhere, env=environ,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (command, done.stderr)
    assert tree(elsewhere) == []


def test_executable_is_the_absolute_console_script(monkeypatch, tmp_path):
    script = tmp_path / "bin" / "mpackhub"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["bin/mpackhub", "serve"])
    assert cli.executable() == str(script)
    monkeypatch.setattr(sys, "argv", ["/somewhere/mpack/cli.py", "serve"])
    assert cli.executable() == f"{shlex.quote(sys.executable)} -m mpack.cli"


@pytest.mark.e2e
def test_url_talks_to_a_running_hub_through_the_admin_routes(tmp_path):
    with live_hub(tmp_path / "hub", workers=1) as server:
        admin = {"MPACKHUB_ADMIN_TOKEN": server.admin_token}
        made = mpackhub("admin", "create-user", "erin", "--url", server.url, cwd=tmp_path, env=admin)
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        server.create_repo(token, "tune")
        history = History().linear(2)
        push_like_cli(server, token, "/erin/tune", history, history.commits)
        listed = mpackhub("jobs", "--json", "--limit", "1", "--url", server.url, "--admin-token", server.admin_token,
                          cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        overview = json.loads(listed.stdout)
        assert sum(overview["counts"].values()) == 1 and len(overview["recent"]) == 1
        report = mpackhub("gc", "--dry-run", "--repo", "erin/tune", "--url", server.url, cwd=tmp_path, env=admin)
        assert report.returncode == 0, report.stderr
        assert json.loads(report.stdout)["dry_run"] is True
        wrong = mpackhub("jobs", "--url", server.url, "--admin-token", "not-the-admin-token", cwd=tmp_path)
        assert wrong.returncode == 1
        assert wrong.stderr.startswith(f"mpackhub: HTTP 401 from 127.0.0.1:{server.url.rsplit(':', 1)[1]}") \
            or "HTTP 403" in wrong.stderr
        missing = mpackhub("gc", "--repo", "erin/none", "--url", server.url, cwd=tmp_path, env=admin)
        assert missing.returncode == 1 and "HTTP 404" in missing.stderr
        checked = mpackhub("fsck", "--dry-run", "--url", server.url, cwd=tmp_path, env=admin)
        assert checked.returncode == 0, checked.stderr
        assert json.loads(checked.stdout)["clean"] is True and json.loads(checked.stdout)["blobs_checked"] == 2
    assert not (tmp_path / "var").exists()
