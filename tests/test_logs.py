"""Logs (issue 10 item 2): one JSON object per line on stderr, request ids, sendfile byte counts, no secrets."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import urllib.request
from types import SimpleNamespace

import pytest

from bench.live_hub import live_hub, push_like_cli
from mpack.http import logs
from tests.factories import History, push_history


@pytest.fixture
def captured():
    """Lines the ``mpackhub`` logger writes while the test runs, through the production formatter and filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.RequestIdFilter())
    logger = logging.getLogger("mpackhub")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_every_response_carries_a_request_id_and_a_sane_client_id_is_kept(app):
    generated = app.get("/healthz").headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{24}", generated)
    assert app.get("/healthz").headers["X-Request-Id"] != generated
    assert app.get("/healthz", headers={"X-Request-Id": "edge-7f3a.01:9"}).headers["X-Request-Id"] == "edge-7f3a.01:9"
    missing = app.get("/no/such/route/at/all", status=404)
    assert re.fullmatch(r"[0-9a-f]{24}", missing.headers["X-Request-Id"])  # error responses too


@pytest.mark.parametrize("bad", ["with space", "x" * 129, "new\\nline", "quote\"d", "é", ""])
def test_an_insane_client_request_id_is_replaced(app, bad):
    answer = app.get("/healthz", headers={"X-Request-Id": bad})
    assert re.fullmatch(r"[0-9a-f]{24}", answer.headers["X-Request-Id"])


def test_app_log_lines_of_a_request_carry_its_request_id(app, owner, repo, captured):
    history = History().linear(3)
    push_history(app, owner[1], "/gabriel/song", history)
    answer = app.post_json("/gabriel/song/fetch/mpack", {"want": [history.tip], "have": []},
                           headers={"X-Request-Id": "fetch-42"})
    assert answer.headers["X-Request-Id"] == "fetch-42"
    built = [line for line in captured() if line["msg"] == "mpack built"]
    assert len(built) == 1 and built[0]["request_id"] == "fetch-42"
    pushed = [line for line in captured() if line["msg"] == "push applied"]
    assert pushed and all(re.fullmatch(r"[0-9a-f]{24}", line["request_id"]) for line in pushed)
    logging.getLogger("mpackhub").info("outside any request")
    assert "request_id" not in captured()[-1]


def _resp(sent: int, length: int | None, status: str = "200 OK", headers_sent: bool = True):
    return SimpleNamespace(sent=sent, response_length=length, status=status, headers_sent=headers_sent)


def test_sent_bytes_counts_a_completed_sendfile_and_nothing_else():
    get = {"REQUEST_METHOD": "GET"}
    assert logs.sent_bytes(_resp(0, 5_000_000), get) == 5_000_000  # sendfile: gunicorn's own count says 0
    assert logs.sent_bytes(_resp(1234, 1234), get) == 1234  # written by gunicorn: its count
    assert logs.sent_bytes(_resp(0, 10), {"REQUEST_METHOD": "HEAD"}) == 0
    assert logs.sent_bytes(_resp(0, 10, "304 Not Modified"), get) == 0
    assert logs.sent_bytes(_resp(0, 10, headers_sent=False), get) == 0
    assert logs.sent_bytes(_resp(0, None), get) == 0
    try:
        raise OSError("client went away during sendfile")
    except OSError:
        assert logs.sent_bytes(_resp(0, 10), get) == 0  # gunicorn's finally with an exception in flight


def test_the_json_formatter_puts_extras_and_tracebacks_in_one_line():
    record = logging.makeLogRecord({"name": "mpackhub", "levelname": "ERROR", "msg": "boom %s", "args": ("x",),
                                    "repo": "a/b"})
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        import sys
        record.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["msg"] == "boom x" and parsed["repo"] == "a/b" and "ValueError" in parsed["exc"]


@pytest.mark.e2e
def test_a_real_gunicorn_writes_only_json_lines_with_request_ids_and_true_byte_counts(tmp_path):
    home = tmp_path / "hub"
    with live_hub(home, workers=2) as server:
        token = server.create_user("logger")
        server.create_repo(token, "tune")
        history = History().linear(4)
        push_like_cli(server, token, "/logger/tune", history, history.commits)
        fetched = server.call("POST", "/logger/tune/fetch/mpack", {"want": ["main"], "have": []}, token=token,
                              as_json=True, headers={"X-Request-Id": "clone-1"})
        assert fetched.status == 200 and fetched.headers["x-request-id"] == "clone-1"
        url = fetched.data()["mpack_url"]
        request = urllib.request.Request(url, headers={"X-Request-Id": "download-1"})
        with urllib.request.urlopen(request, timeout=30) as response:
            pack = response.read()
            assert response.headers["X-Request-Id"] == "download-1"
        ranged = urllib.request.Request(url, headers={"X-Request-Id": "range-1", "Range": "bytes=10-19"})
        with urllib.request.urlopen(ranged, timeout=30) as response:
            assert response.status == 206 and len(response.read()) == 10
        server.call("GET", "/healthz", headers={"X-Request-Id": "bad id with spaces"})
        # From 127.0.0.1, a trusted proxy by default: the client is the last address it forwarded.
        server.call("GET", "/healthz", headers={"X-Request-Id": "proxied-1", "X-Forwarded-For": "10.0.0.9, 203.0.113.5"})
        server.call("GET", "/healthz", headers={"X-Request-Id": "proxied-2", "X-Forwarded-For": "not an address"})
        signature = url.split("sig=")[1]
    lines = (home.parent / next(p.name for p in home.parent.glob("gunicorn-*.log"))).read_text().splitlines()
    assert lines
    entries = [json.loads(line) for line in lines]  # every single line is one JSON object
    assert all(isinstance(e, dict) and {"ts", "level", "logger", "msg"} <= set(e) for e in entries)
    loggers = {e["logger"] for e in entries}
    assert {"gunicorn.error", "gunicorn.access", "mpackhub"} <= loggers  # gunicorn's own lines are JSON too
    access = {e.get("request_id"): e for e in entries if e["logger"] == "gunicorn.access"}
    assert access["download-1"]["bytes"] == len(pack) > 0 and access["download-1"]["status"] == 200
    assert access["range-1"]["bytes"] == 10 and access["range-1"]["status"] == 206
    assert access["clone-1"]["path"] == "/logger/tune/fetch/mpack" and access["clone-1"]["bytes"] > 0
    assert "bad id with spaces" not in access
    assert access["clone-1"]["remote"] == "127.0.0.1" and access["proxied-1"]["remote"] == "203.0.113.5"
    assert access["proxied-2"]["remote"] == "127.0.0.1"
    text = "\n".join(lines)
    assert signature not in text and "sig=" not in text and token not in text and server.admin_token not in text


@pytest.mark.e2e
def test_app_lines_on_a_real_gunicorn_carry_the_request_id_of_their_request(tmp_path):
    home = tmp_path / "hub"
    with live_hub(home, workers=1, env={"MPACKHUB_JOB_THREADS": "0"}) as server:
        token = server.create_user("idler")
        server.create_repo(token, "song")
        history = History().linear(2)
        push_like_cli(server, token, "/idler/song", history, history.commits)
        answer = server.call("POST", "/idler/song/fetch/mpack", {"want": [history.tip], "have": []},
                             headers={"X-Request-Id": "build-7"})
        assert answer.status == 200 and answer.data()["cached"] is False
    entries = [json.loads(line) for line in next(home.parent.glob("gunicorn-*.log")).read_text().splitlines()]
    built = [e for e in entries if e["msg"] == "mpack built"]
    assert [e["request_id"] for e in built] == ["build-7"]
    assert any(e.get("request_id") == "build-7" and e["logger"] == "gunicorn.access" for e in entries)


def test_fresh_request_ids_are_unique_and_a_forked_worker_draws_its_own_prefix():
    from mpack.http.logs import sane_request_id

    ids = [sane_request_id(None) for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(re.fullmatch(r"[0-9a-f]{24}", rid) for rid in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a gunicorn worker is a fork of the master
        os.write(write, sane_request_id(None).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert re.fullmatch(r"[0-9a-f]{24}", child) and child[:12] != ids[0][:12]
