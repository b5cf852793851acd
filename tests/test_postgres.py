"""PostgreSQL only (``MPACKHUB_TEST_DATABASE=postgresql``): several nodes on one database, and a
database restart under load that the hub rides out without being restarted."""
from __future__ import annotations

import threading
import time

import pytest

from bench.live_hub import live_hub, push_like_cli
from bench.postgres import postgres_cluster
from mpack.hub import build, fetch
from mpack.hub.bootstrap import build_hub
from mpack.hub.health import health
from mpack.hub.services import Hub
from mpack.hub.settings import Settings
from tests.database import only_postgres
from tests.factories import History, push_history

pytestmark = only_postgres

PATH = "/gabriel/song"
FAST = 3.0  # seconds: a 503 for a database that is down must come at least this fast


class Counter:
    def __init__(self, fn):
        self.fn, self.calls, self.lock = fn, 0, threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.calls += 1
        return self.fn(*args, **kwargs)


def test_concurrent_identical_misses_on_two_nodes_build_once(hub, app, owner, repo, tmp_path, monkeypatch):
    """Two nodes (own homes, own single-flight state, one database and bucket): one build between them."""
    history = History().linear(5)
    push_history(app, owner[1], PATH, history)
    other = Hub(settings=Settings.for_home(tmp_path / "node-b", database_url=hub.settings.database_url,
                                           public_url="http://hub.test", job_threads=0),
                db=hub.db, store=hub.store, clock=hub.clock)
    assert other.flights is not hub.flights
    builds = Counter(build.build_mpack)
    monkeypatch.setattr(fetch, "build_mpack", builds)
    barrier = threading.Barrier(16)
    results, errors = [], []

    def clone(node: Hub) -> None:
        barrier.wait()
        try:
            results.append(fetch.wire_fetch_mpack(node, repo, want=[history.tip], have=[])["mpack_id"])
        except Exception as exc:
            errors.append(exc)
        finally:
            node.db.close()

    threads = [threading.Thread(target=clone, args=(hub if n % 2 else other,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert builds.calls == 1
    assert len(results) == 16 and len(set(results)) == 1


class Load:
    """One client asking for a repository in a loop, recording (status, error code, seconds)."""

    def __init__(self, server) -> None:
        self.server, self.replies = server, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            reply = self.server.call("GET", f"/api/repos{PATH}", as_json=True)
            code = reply.data().get("error") if reply.status != 200 else None
            self.replies.append((reply.status, code, time.monotonic() - started))
            self._stop.wait(0.02)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_for(self, status: int, deadline_s: float) -> None:
        seen = len(self.replies)
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if any(s == status for s, _, _ in self.replies[seen:]):
                return
            self._stop.wait(0.05)
        raise AssertionError(f"no {status} within {deadline_s} s; last replies {self.replies[-5:]}")


@pytest.mark.e2e
def test_postgres_restarted_under_load_gives_fast_503s_then_recovers_without_a_hub_restart(tmp_path):
    with postgres_cluster(tmp_path / "pg") as cluster, \
            live_hub(tmp_path / "hub", workers=2, env={"MPACKHUB_DATABASE_URL": cluster.url(),
                                                       "MPACKHUB_JOB_THREADS": "1"}) as server:
        token = server.create_user("gabriel")
        server.create_repo(token, "song")
        history = History().linear(3)
        push_like_cli(server, token, PATH, history, history.commits)
        workers = server.call("GET", "/healthz", as_json=True).data()
        assert workers["status"] == "ok"

        with Load(server) as load:
            load.wait_for(200, 10)
            cluster.stop("fast")
            load.wait_for(503, 15)
            down = server.call("GET", "/healthz", as_json=True)
            assert down.status == 503 and down.data()["status"] == "degraded"
            cluster.start()
            load.wait_for(200, 20)

        statuses = {status for status, _, _ in load.replies}
        assert statuses <= {200, 503}, statuses  # never a 500 while the database was away
        failures = [(code, seconds) for status, code, seconds in load.replies if status == 503]
        assert failures and {code for code, _ in failures} == {"database_unavailable"}
        assert max(seconds for _, seconds in failures) < FAST, failures

        # Every worker process and the job threads are back: health, pushes, prebuilds and clones work.
        deadline = time.monotonic() + 10
        while server.call("GET", "/healthz", as_json=True).status != 200:  # each thread sees one dead connection
            assert time.monotonic() < deadline, "healthz never recovered"
            time.sleep(0.05)
        history.commit()
        push_like_cli(server, token, PATH, history, history.commits[-1:])
        reply = server.call("POST", f"{PATH}/fetch/mpack", {"want": [history.tip]}, token=token)
        assert reply.status == 200 and reply.data()["commit_count"] == 4
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            counts = server.call("GET", "/admin/jobs", token=server.admin_token, as_json=True).data()["counts"]
            if counts["pending"] == 0 and counts["running"] == 0 and counts["done"] >= 1:
                break
            time.sleep(0.1)
        assert counts["failed"] == 0 and counts["done"] >= 1, counts


def test_a_hub_started_before_its_database_waits_for_it(tmp_path, caplog):
    """MPACKHUB_DATABASE_WAIT: migration is retried while PostgreSQL refuses connections."""
    with postgres_cluster(tmp_path / "pg") as cluster:
        cluster.stop("fast")
        settings = Settings.for_home(tmp_path / "hub", database_url=cluster.url(), public_url="http://hub.test",
                                     job_threads=0, database_wait=60)
        built: list = []
        starting = threading.Thread(target=lambda: built.append(build_hub(settings)), daemon=True)
        with caplog.at_level("WARNING", logger="mpack.hub.db"):
            starting.start()
            deadline = time.monotonic() + 30
            while not any("database unreachable" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the starting hub never retried"
                time.sleep(0.05)
            assert built == []
            cluster.start()
            starting.join(60)
        assert len(built) == 1
        hub = built[0]
        try:
            assert health(hub)["status"] == "ok"
        finally:
            hub.db.close()

