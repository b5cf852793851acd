"""A real gunicorn (with gunicorn.conf.py) on 127.0.0.1 and a random port, for end-to-end tests."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgpack

from bench.history import History

ROOT = Path(__file__).resolve().parent.parent
MSGPACK = "application/x-msgpack"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict

    def data(self) -> dict:
        return msgpack.unpackb(self.body, raw=False) if self.headers.get("content-type", "").startswith(MSGPACK) \
            else json.loads(self.body)


@dataclass
class LiveHub:
    url: str
    home: Path
    admin_token: str
    process: subprocess.Popen
    log_path: Path | None = None

    def call(self, method: str, path: str, body: dict | None = None, *, token: str | None = None,
             as_json: bool = False, headers: dict | None = None) -> Reply:
        """One HTTP call; msgpack both ways as the Muse CLI does, unless ``as_json``."""
        sent = dict(headers or {})
        sent["Accept"] = "application/json" if as_json else f"{MSGPACK}, application/json"
        data = None
        if body is not None:
            sent["Content-Type"] = "application/json" if as_json else MSGPACK
            data = json.dumps(body).encode() if as_json else msgpack.packb(body, use_bin_type=True)
        if token:
            sent["Authorization"] = f"Bearer {token}"
        target = path if path.startswith("http") else self.url + path
        request = urllib.request.Request(target, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return Reply(response.status, response.read(), {k.lower(): v for k, v in response.headers.items()})
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, exc.read(), {k.lower(): v for k, v in exc.headers.items()})

    def create_user(self, name: str) -> str:
        reply = self.call("POST", "/admin/users", {"username": name}, token=self.admin_token, as_json=True)
        assert reply.status == 201, reply.body
        return reply.data()["token"]

    def create_repo(self, token: str, name: str, visibility: str = "public") -> dict:
        reply = self.call("POST", "/api/repos", {"name": name, "visibility": visibility}, token=token, as_json=True)
        assert reply.status == 201, reply.body
        return reply.data()


def poll(predicate, deadline_s: float = 30.0, what: str = "condition"):
    """``predicate()``'s first truthy value, asked every 50 ms; AssertionError after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_healthy(url: str, process: subprocess.Popen, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError("gunicorn did not become healthy")


def listening_socket() -> socket.socket:
    """A socket already bound and listening on a free loopback port, for gunicorn's ``fd://`` bind.

    Handing gunicorn the bound socket (instead of a port number found free a moment earlier)
    leaves no window in which another process can take the port.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def stop_gunicorn(process: subprocess.Popen, graceful_s: float = 10.0) -> None:
    """SIGTERM (drain), then SIGQUIT (quick stop) if a kept-alive connection holds a worker, then kill."""
    for sig, wait_s in ((signal.SIGTERM, graceful_s), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def live_hub(home: Path, *, workers: int = 2, env: dict | None = None):
    sock = listening_socket()
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    environ = {
        **os.environ, "MPACKHUB_HOME": str(home), "MPACKHUB_PUBLIC_URL": url, "MPACKHUB_BIND": f"fd://{sock.fileno()}",
        "MPACKHUB_ADMIN_TOKEN": "test-admin-token-" + os.urandom(8).hex(),
        "MPACKHUB_SIGNING_KEYS": "k1:" + os.urandom(16).hex(),
        "MPACKHUB_WORKERS": str(workers), "MPACKHUB_JOB_POLL_SECONDS": "0.2", **(env or {}),
    }  # several nodes of one hub share the admin token and signing keys: pass them in ``env``
    admin = environ["MPACKHUB_ADMIN_TOKEN"]
    log_path = home.parent / f"gunicorn-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 — closed below
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")],
                               cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT,
                               pass_fds=(sock.fileno(),))
    sock.close()  # gunicorn holds it now
    try:
        wait_healthy(url, process)
        yield LiveHub(url, home, admin, process, log_path)
    finally:
        stop_gunicorn(process)
        log.close()


def push_like_cli(server: LiveHub, token: str, path: str, history: History, commits: list[dict], branch: str = "main"):
    """The Muse CLI's push: refs → filter-objects → push/objects (chunks of 400) → push."""
    assert server.call("GET", f"{path}/refs", token=token).status == 200
    bundle = history.bundle(commits)
    wanted = sorted(o["object_id"] for o in bundle["objects"])
    missing = set(server.call("POST", f"{path}/filter-objects", {"object_ids": wanted}, token=token).data()["missing"])
    objects = [o for o in bundle["objects"] if o["object_id"] in missing]
    for start in range(0, len(objects), 400):
        reply = server.call("POST", f"{path}/push/objects", {"objects": objects[start:start + 400]}, token=token)
        assert reply.status == 200, reply.body
    bundle["objects"] = []
    reply = server.call("POST", f"{path}/push", {"bundle": bundle, "branch": branch, "force": False}, token=token)
    assert reply.status == 200, reply.body
    return reply.data()
