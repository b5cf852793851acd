"""The hub behind nginx with ``MPACKHUB_ACCEL_REDIRECT``: nginx sends the packs, the hub only checks tokens.

A real gunicorn and a real nginx on loopback, configured as docs/operations.md
says: every route proxied to the hub, and an ``internal`` location serving the
store's ``mpacks/`` directory. Signed URLs name nginx (``MPACKHUB_PUBLIC_URL``),
so the client's whole clone goes through it.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench.live_hub import LiveHub, live_hub, push_like_cli
from bench.nginx import Nginx, nginx_missing, quoted
from bench.util import free_port
from mpack import cli
from mpack.client.layout import MuseRepo
from tests.factories import History
from tests.test_e2e_client import assert_clone_holds, fifty_commits
from tests.test_hostile_input_live import big_pack, stalled_download, wait_for_access_line

pytestmark = pytest.mark.skipif(nginx_missing() is not None, reason=nginx_missing() or "")

MiB = 1024 * 1024
INTERNAL = "/_mpackhub_packs/"


@contextmanager
def hub_behind_nginx(home: Path, env: dict | None = None):
    """(the hub, nginx) — the hub's public URL and X-Accel-Redirect location point at nginx."""
    port = free_port()
    settings = {"MPACKHUB_PUBLIC_URL": f"http://127.0.0.1:{port}", "MPACKHUB_ACCEL_REDIRECT": INTERNAL,
                "MPACKHUB_JOB_THREADS": "0", **(env or {})}
    with live_hub(home, workers=1, env=settings) as server:
        def locations(tmp: Path) -> str:
            return f"""
        client_max_body_size 256m;
        location {INTERNAL} {{
            internal;
            alias {quoted(str(home / "store" / "mpacks") + "/")};
        }}
        location / {{
            proxy_pass {server.url};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_buffering off;
            proxy_http_version 1.1;
        }}"""

        with Nginx(locations, port=port) as nginx:
            yield server, nginx


def pushed(server: LiveHub, name: str, history: History) -> str:
    token = server.create_user(name)
    server.create_repo(token, "song")
    push_like_cli(server, token, f"/{name}/song", history, history.commits)
    return f"/{name}/song"


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", parts.path + ("?" + parts.query if parts.query else ""), headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_a_clone_through_nginx_gets_its_pack_from_nginx(tmp_path, monkeypatch):
    monkeypatch.delenv("MPACKHUB_TOKEN", raising=False)  # the clone is anonymous
    with hub_behind_nginx(tmp_path / "hub") as (server, nginx):
        history = fifty_commits()
        path = pushed(server, "ada", history)
        target = tmp_path / "opus"
        assert cli.main(["clone", nginx.url + path, str(target)]) == 0
        handed = wait_for_access_line(server.log_path, "/mpacks/", deadline=10)
    assert_clone_holds(MuseRepo(target), history)
    assert handed["bytes"] == 0  # the hub answered with headers only; nginx sent the pack


def test_nginx_serves_ranges_and_refuses_its_internal_location_from_outside(tmp_path):
    with hub_behind_nginx(tmp_path / "hub") as (server, nginx):
        path = pushed(server, "bo", History().linear(3))
        answer = server.call("POST", f"{path}/fetch/mpack", {"want": ["main"], "have": []}, as_json=True).data()
        url = answer["mpack_url"]
        assert url.startswith(nginx.url + "/mpacks/")
        status, headers, whole = get(url)
        partial = get(url, {"Range": "bytes=10-19"})
        tampered = get(url.replace("sig=", "sig=A"))
        digest = answer["mpack_id"].removeprefix("sha256:")
        direct = get(f"{nginx.url}{INTERNAL}{digest[:2]}/{digest}")
    assert status == 200 and hashlib.sha256(whole).hexdigest() == digest
    assert headers["content-length"] == str(len(whole)) and "x-accel-redirect" not in headers
    assert "immutable" in headers["cache-control"]
    assert partial[0] == 206 and partial[2] == whole[10:20]
    assert tampered[0] == 403 and json.loads(tampered[2])["error"] == "invalid_url_token"
    assert direct[0] == 404  # only the hub's answer reaches the files


def test_stalled_downloads_through_nginx_hold_no_hub_thread(tmp_path):
    """With one download slot, a second download served by the hub would be 503 at once; handed to nginx, every
    reader that stops reading waits on nginx, and the hub keeps answering."""
    env = {"MPACKHUB_THREADS": "2", "MPACKHUB_DOWNLOADS": "1"}
    with hub_behind_nginx(tmp_path / "hub", env) as (server, nginx):
        answer = big_pack(server, "cy")
        stalled = [stalled_download(answer["mpack_url"]) for _ in range(4)]
        try:
            firsts = [first_line(sock) for sock in stalled]
            health = get(nginx.url + "/healthz")
        finally:
            for sock in stalled:
                sock.close()
    assert firsts == [b"HTTP/1.1 200 OK"] * 4
    assert health[0] == 200


def first_line(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while b"\r\n" not in data:
        piece = sock.recv(1)
        assert piece, "the connection closed before the status line"
        data += piece
    return data.rstrip(b"\r\n")
