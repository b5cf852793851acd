"""Metrics on a real gunicorn with 2 workers: every worker's counts (and its job threads') add up in one scrape."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from bench.live_hub import ROOT, LiveHub, free_port, live_hub, push_like_cli, wait_healthy
from bench.live_hub import poll as wait_for
from tests.factories import History

pytestmark = pytest.mark.e2e

FETCHES = "mpackhub_fetch_requests_total"




def scrape(server) -> dict[tuple[str, tuple], float]:
    reply = server.call("GET", "/metrics", token=server.admin_token)
    assert reply.status == 200, reply.body
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.body.decode()) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def fetches_per_process(metrics_dir) -> dict[int, float]:
    """pid → fetch requests it counted, read from each worker's own value file."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        families = MultiProcessCollector.merge([str(path)], accumulate=True)
        counts[pid] = sum(s.value for f in families for s in f.samples if s.name == FETCHES)
    return counts


def test_fetches_on_both_workers_add_up_exactly(tmp_path):
    with live_hub(tmp_path / "hub", workers=2) as server:
        token = server.create_user("metered")
        server.create_repo(token, "tune")
        history = History().linear(3)
        push_like_cli(server, token, "/metered/tune", history, history.commits)
        wait_for(lambda: total(scrape(server), "mpackhub_job_runs_total", outcome="done") >= 1,
                 what="the prebuild, run by a worker's job thread")
        before = total(scrape(server), FETCHES)
        metrics_dir = server.home / "metrics"
        sent = 0

        def both_workers_served() -> bool:
            nonlocal sent
            for _ in range(10):
                reply = server.call("POST", "/metered/tune/fetch/mpack", {"want": [history.tip]})
                assert reply.status == 200, reply.body
                sent += 1
            return len([c for c in fetches_per_process(metrics_dir).values() if c > 0]) >= 2

        wait_for(both_workers_served, what="fetches answered by both workers")
        after = scrape(server)
        assert total(after, FETCHES) - before == sent
        assert total(after, FETCHES, result="hit") >= sent  # the prebuild made every fetch a hit

        # A worker that dies keeps its counts; gunicorn's child_exit marks it dead.
        victim = max(fetches_per_process(metrics_dir), key=lambda pid: fetches_per_process(metrics_dir)[pid])
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: server.call("GET", "/healthz").status == 200, what="a replacement worker")
        assert total(scrape(server), FETCHES) == total(after, FETCHES)


def test_mpackhub_serve_counts_in_multiprocess_mode(tmp_path):
    """``mpackhub serve`` has imported prometheus_client already; it execs a fresh gunicorn that counts."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    admin = "serve-admin-token-" + os.urandom(8).hex()
    env = {**os.environ, "MPACKHUB_HOME": str(tmp_path / "hub"), "MPACKHUB_ADMIN_TOKEN": admin,
           "MPACKHUB_SIGNING_KEYS": "k1:" + os.urandom(16).hex(), "MPACKHUB_WORKERS": "2"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(tmp_path / "serve.log", "wb") as log:
        process = subprocess.Popen([str(ROOT / ".venv" / "bin" / "mpackhub") if (ROOT / ".venv").exists() else "mpackhub",
                                    "serve", "--bind", f"127.0.0.1:{port}"], cwd=tmp_path, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(url, process)
            server = LiveHub(url, tmp_path / "hub", admin, process)
            token = server.create_user("served")
            server.create_repo(token, "tune")
            for _ in range(4):
                assert server.call("POST", "/served/tune/fetch/mpack", {"want": ["0" * 64]}).status == 404
            assert total(scrape(server), FETCHES, result="error") == 4
            assert list((tmp_path / "hub" / "metrics").glob("counter_*.db"))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=40)


def test_a_gc_run_from_a_shell_is_in_the_servers_next_scrape(tmp_path):
    """``mpackhub gc --home`` beside a running hub counts into the workers' metric files (carried over from
    issue 8: a shell's GC was invisible to Prometheus); ``mpackhub jobs`` leaves no file of its own there."""
    home = tmp_path / "hub"
    with live_hub(home, workers=1, env={"MPACKHUB_JOB_THREADS": "0"}) as server:
        before = total(scrape(server), "mpackhub_gc_runs_total")
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("MPACKHUB_", "PROMETHEUS_"))}
        files = set((home / "metrics").glob("*.db"))
        for command in (["jobs"], ["gc", "--dry-run"], ["gc"]):
            done = subprocess.run([sys.executable, "-m", "mpack.cli", *command, "--home", str(home)], env=environ,
                                  cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            if command == ["jobs"]:
                assert set((home / "metrics").glob("*.db")) == files
        samples = scrape(server)
        assert total(samples, "mpackhub_gc_runs_total", mode="dry_run") == 1
        assert total(samples, "mpackhub_gc_runs_total") == before + 2
        shell_files = set((home / "metrics").glob("*.db")) - files
        assert shell_files and all(f.stem.endswith("_shell") for f in shell_files)  # one set for every run


def test_gc_runs_from_a_shell_share_one_metric_file_unless_one_runs_alongside(tmp_path):
    """An hourly cron's runs would each leave a file the scrape reads until the server restarts: runs one after
    another count into ``counter_shell.db``; a run while another holds ``shell.lock`` writes files of its own."""
    home = tmp_path / "hub"
    with live_hub(home, workers=1, env={"MPACKHUB_JOB_THREADS": "0"}) as server:
        before = total(scrape(server), "mpackhub_gc_runs_total")
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("MPACKHUB_", "PROMETHEUS_"))}
        gc = [sys.executable, "-m", "mpack.cli", "gc", "--home", str(home)]
        files = set((home / "metrics").glob("*.db"))
        for _ in range(3):
            done = subprocess.run(gc, env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        after_three = set((home / "metrics").glob("*.db")) - files
        assert {f.stem.rsplit("_", 1)[1] for f in after_three} == {"shell"}
        with open(home / "metrics" / "shell.lock", "a") as held:  # as a run still going would hold it
            fcntl.flock(held, fcntl.LOCK_EX)
            done = subprocess.run(gc, env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        alongside = set((home / "metrics").glob("*.db")) - files - after_three
        assert alongside and all(f.stem.rsplit("_", 1)[1].isdigit() for f in alongside)
        assert total(scrape(server), "mpackhub_gc_runs_total") == before + 4
