"""Hostile request bodies against a real gunicorn (issue 9, items 1, 3 and 4).

Each test starts its own hub (bench/live_hub.py) so that one attack's damage
cannot hide another's. They measure the worker processes themselves: peak
memory from /proc/<pid>/status, latency of /healthz while slow clients hold
connections, and what a client that keeps sending after a refusal receives.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import pytest

from bench.live_hub import LiveHub, live_hub, push_like_cli
from tests.factories import History

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def worker_pids(master_pid: int) -> list[int]:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the highest resident set size the process has had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def raw_post(url: str, path: str, body: bytes, headers: dict, *, chunked: bool = False, timeout: float = 60):
    """POST with http.client (a client that sends the whole body first, as the Muse CLI does)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        if chunked:
            conn.putrequest("POST", path)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for start in range(0, len(body), MiB):
                piece = body[start:start + MiB]
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
        else:
            conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def amplification_body(size: int) -> bytes:
    """``{"want": [{}, {}, …]}`` in msgpack: one byte on the wire per empty map."""
    count = size - 16
    return b"\x81\xa4want\xdd" + count.to_bytes(4, "big") + b"\x80" * count


def nested_amplification_body(size: int, width: int = 100_000) -> bytes:
    """``{"want": [[{}, …], [{}, …], …]}``: every array within the length limit, the whole far over."""
    inner = b"\xdd" + width.to_bytes(4, "big") + b"\x80" * width
    count = size // len(inner)
    return b"\x81\xa4want\xdd" + count.to_bytes(4, "big") + inner * count


@pytest.fixture
def public_repo_hub(tmp_path):
    with live_hub(tmp_path / "hub", workers=1, env={"MPACKHUB_JOB_THREADS": "0"}) as server:
        token = server.create_user("alice")
        server.create_repo(token, "song")
        yield server, token


def test_amplification_body_to_fetch_mpack_is_refused_without_growing_a_worker(public_repo_hub):
    """Issue 9 item 1: 16 MiB of ``{}`` once cost a worker ~70x the body; now 4xx and < 64 MiB of peak RSS."""
    server, _ = public_repo_hub
    pids = worker_pids(server.process.pid)
    before = {pid: peak_rss_kib(pid) for pid in pids}
    headers = {"Content-Type": "application/x-msgpack", "Accept": "application/json"}
    sixteen = amplification_body(16 * MiB)
    # Declared (refused on Content-Length), chunked (refused while reading), and two just
    # under the read-route limit (refused while decoding: one array too long, arrays too many).
    under = [amplification_body(7 * MiB), nested_amplification_body(7 * MiB)]
    for body, chunked in [(sixteen, False), (sixteen, True), (under[0], False), (under[1], False)] * 2:
        status, reply, _ = raw_post(server.url, "/alice/song/fetch/mpack", body, headers, chunked=chunked)
        assert 400 <= status < 500, (status, reply[:300])
        assert set(json.loads(reply)) == {"error", "detail"}
    grown = {pid: (peak_rss_kib(pid) - before[pid]) // 1024 for pid in pids}
    assert max(grown.values()) < 64, f"peak RSS grew by {grown} MiB"


def slow_client(url: str, path: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-msgpack\r\n"
                 f"Content-Length: 1000\r\n\r\n".encode() + b"\x81")
    return sock


def read_answer(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    data = b""
    while True:
        piece = sock.recv(65536)
        if not piece:
            return data
        data += piece


def test_slow_bodies_do_not_stall_healthz(tmp_path):
    """Issue 9 item 3: 32 connections that send one byte of a 1000-byte body leave /healthz answering."""
    deadline = 2.0
    with live_hub(tmp_path / "hub", workers=2,
                  env={"MPACKHUB_BODY_TIMEOUT": str(deadline), "MPACKHUB_JOB_THREADS": "0"}) as server:
        token = server.create_user("alice")
        server.create_repo(token, "song")
        slow = [slow_client(server.url, "/alice/song/fetch/mpack") for _ in range(32)]
        try:
            # A client with a whole body while stalled ones hold the readers: a complete JSON answer.
            body = msgpack.packb({"want": ["main"], "pad": "x" * 50_000})
            status, reply, _ = raw_post(server.url, "/alice/song/fetch/mpack", body,
                                        {"Content-Type": "application/x-msgpack", "Accept": "application/json"})
            assert status in (404, 503) and "error" in json.loads(reply), (status, reply)
            slowest = 0.0
            end = time.monotonic() + 3 * deadline
            while time.monotonic() < end:
                started = time.monotonic()
                reply = server.call("GET", "/healthz", as_json=True)
                slowest = max(slowest, time.monotonic() - started)
                assert reply.status == 200
            assert slowest < deadline + 1.0, f"/healthz took {slowest:.2f} s"
            # The slow clients were answered — 408 once their deadline passed, 503 when only
            # stalled clients held the readers — with a JSON error, and not left hanging.
            codes = [json.loads(read_answer(sock, deadline + 5).split(b"\r\n\r\n", 1)[1])["error"] for sock in slow]
            assert set(codes) <= {"body_timeout", "busy"} and "body_timeout" in codes, codes
        finally:
            for sock in slow:
                sock.close()


def test_refused_push_objects_without_auth_still_delivers_the_json_error(public_repo_hub):
    """Issue 9 item 4: a multi-MB anonymous push/objects gets its 401 JSON, not a broken pipe."""
    server, _ = public_repo_hub
    content = bytes(range(256)) * (16 * 1024)  # 4 MiB
    body = msgpack.packb({"objects": [{"object_id": "0" * 64, "content": content} for _ in range(2)]},
                         use_bin_type=True)
    headers = {"Content-Type": "application/x-msgpack", "Accept": "application/json"}
    for _ in range(3):  # either worker, fresh connection each time as the CLI does
        status, reply, _ = raw_post(server.url, "/alice/song/push/objects", body, headers)
        assert status == 401
        assert json.loads(reply)["error"] == "unauthorized"


def test_refused_push_by_a_stranger_still_delivers_the_json_error(public_repo_hub):
    """Issue 9 item 4: the same for an authenticated user without write access (403)."""
    server, _ = public_repo_hub
    stranger = server.create_user("mallory")
    body = msgpack.packb({"bundle": {"commits": [], "snapshots": [], "objects": [
        {"object_id": "0" * 64, "content": b"x" * (6 * MiB)}]}, "branch": "main"}, use_bin_type=True)
    headers = {"Content-Type": "application/x-msgpack", "Accept": "application/json",
               "Authorization": f"Bearer {stranger}"}
    status, reply, _ = raw_post(server.url, "/alice/song/push", body, headers)
    assert status == 403
    assert json.loads(reply)["error"] == "forbidden"


def paced_push_objects(url: str, path: str, token: str, pieces: int = 8, pause: float = 0.03,
                       piece_size: int = 256 * 1024):
    """One push/objects of ``pieces`` × ``piece_size`` bytes sent with pauses: an upload that moves, slowly."""
    blob = os.urandom(pieces * piece_size - 200)
    body = msgpack.packb({"objects": [{"object_id": hashlib.sha256(blob).hexdigest(), "content": blob}]},
                         use_bin_type=True)
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("POST", path)
        for name, value in {"Content-Type": "application/x-msgpack", "Accept": "application/json",
                            "Authorization": f"Bearer {token}", "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders()
        for start in range(0, len(body), piece_size):
            conn.send(body[start:start + piece_size])
            time.sleep(pause)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_uploads_that_move_wait_for_a_reader_instead_of_a_503(tmp_path):
    """The Muse CLI sends four push/objects at once: with one body reader they queue, none is refused."""
    with live_hub(tmp_path / "hub", workers=1, env={"MPACKHUB_THREADS": "2", "MPACKHUB_JOB_THREADS": "0"}) as server:
        token = server.create_user("alice")
        server.create_repo(token, "song")
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: paced_push_objects(server.url, "/alice/song/push/objects", token),
                                    range(4)))
        assert [status for status, _ in results] == [200] * 4, results


def test_an_upload_at_twice_the_minimum_rate_outlasts_the_body_timeout(tmp_path):
    """The deadline moves with the bytes received: 512 KiB at 128 KiB/s (4 s) against a 1 s timeout is
    taken, however large the pieces the hub reads a fast body in (mpack/http/bodies.py)."""
    env = {"MPACKHUB_BODY_TIMEOUT": "1", "MPACKHUB_BODY_MIN_RATE": str(64 * 1024), "MPACKHUB_JOB_THREADS": "0"}
    with live_hub(tmp_path / "hub", workers=1, env=env) as server:
        token = server.create_user("alice")
        server.create_repo(token, "song")
        status, reply = paced_push_objects(server.url, "/alice/song/push/objects", token,
                                           pieces=32, pause=0.125, piece_size=16 * 1024)
        assert status == 200, reply


def test_a_malformed_chunked_body_is_a_400_without_a_traceback(public_repo_hub):
    """gunicorn's own parse error while the hub reads a chunked body (not an OSError) once meant a 500."""
    server, _ = public_repo_hub
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /alice/song/fetch/mpack HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-msgpack\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n\x81\xa4want\r\nzz\r\n")
        head, _, body = read_answer(sock, 10).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert json.loads(body)["error"] == "malformed_body"
    log = next(server.home.parent.glob("gunicorn-*.log")).read_text()
    assert "Traceback" not in log


def framing_case(rng: random.Random, body: bytes) -> bytes:
    """A request whose framing is wrong in one of the ways a broken or hostile client gets it wrong."""
    path = rng.choice(["/alice/song/fetch/mpack", "/alice/song/push/objects", "/alice/song/refs", "/healthz",
                       "/admin/gc", "/api/repos", "/mpacks/" + "0" * 64, "/alice/song/push"])
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-msgpack\r\nConnection: close\r\n"
    kind = rng.randrange(6)
    if kind == 0:  # declares more than it sends
        return (head + f"Content-Length: {len(body) + rng.randint(1, 5000)}\r\n\r\n").encode() + body
    if kind == 1:  # declares less than it sends (the rest looks like a next request)
        return (head + f"Content-Length: {rng.randint(0, len(body))}\r\n\r\n").encode() + body
    if kind == 2:  # chunk sizes that lie or are not hex
        size = rng.choice([f"{len(body):x}", f"{len(body) + 3:x}", "zz", "-1", "1" * 30, f"{len(body):x};x=\r"])
        return (head + "Transfer-Encoding: chunked\r\n\r\n" + size + "\r\n").encode() + body + b"\r\n0\r\n\r\n"
    if kind == 3:  # chunked, then cut short
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"%x\r\n" % len(body) + body[:len(body) // 2]
    if kind == 4:  # both framings at once
        return (head + f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n").encode() + body
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + bytes(rng.randrange(256) for _ in body)


def test_broken_framing_on_a_real_gunicorn_never_gets_a_5xx_or_a_traceback(public_repo_hub):
    """Body framing only a real server sees (webtest hands the app a clean stream): seeded, ~5 s."""
    server, token = public_repo_hub
    rng = random.Random(int(os.environ.get("MPACKHUB_FUZZ_SEED", "9")))
    host, port = server.url.removeprefix("http://").split(":")
    body = msgpack.packb({"want": ["main"], "have": [], "objects": [], "pad": b"x" * 300})
    end, cases = time.monotonic() + 5, 0
    while time.monotonic() < end:
        raw = framing_case(rng, body)
        if rng.random() < 0.5:
            raw = raw.replace(b"Host: x\r\n", f"Host: x\r\nAuthorization: Bearer {token}\r\n".encode())
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            try:
                answer = read_answer(sock, 10)
            except ConnectionResetError:
                answer = b""
        cases += 1
        if answer:
            status = int(answer.split(b" ", 2)[1])
            assert status < 500, (raw[:300], answer[:300])
    log = next(server.home.parent.glob("gunicorn-*.log")).read_text()
    assert "Traceback" not in log and "Error handling request" not in log, log[-2000:]
    assert cases > 20


def _responses(sock: socket.socket, count: int, timeout: float = 30) -> list[tuple[int, bytes]]:
    """``count`` HTTP/1.1 responses read off one connection: (status, body) each, by Content-Length."""
    sock.settimeout(timeout)
    data, answers = b"", []
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            assert piece, f"the connection closed after {len(answers)} answer(s): {data[:300]!r}"
            data += piece
        head, data = data.split(b"\r\n\r\n", 1)
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(data) < length:
            piece = sock.recv(65536)
            assert piece, "the connection closed inside an answer"
            data += piece
        answers.append((int(head.split(b" ", 2)[1]), data[:length]))
        data = data[length:]
    return answers


def test_a_large_body_read_in_place_leaves_a_pipelined_request_intact(public_repo_hub):
    """push/objects of 2 MiB (received straight into its buffer, gunicorn_body.receive_into) sent in one write
    with a GET /healthz behind it on the same connection: both answered, the objects stored."""
    server, token = public_repo_hub
    contents = [os.urandom(MiB), os.urandom(MiB)]
    objects = [{"object_id": hashlib.sha256(content).hexdigest(), "content": content} for content in contents]
    body = msgpack.packb({"objects": objects}, use_bin_type=True)
    host, port = server.url.removeprefix("http://").split(":")
    post = (f"POST /alice/song/push/objects HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/x-msgpack\r\nAccept: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    healthz = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(post + healthz)
        (push_status, push_reply), (health_status, health_reply) = _responses(sock, 2)
    assert push_status == 200, push_reply[:300]
    assert json.loads(push_reply)["stored"] == len(objects)
    assert health_status == 200 and json.loads(health_reply)["status"] == "ok"


def test_a_body_cut_short_is_a_400_and_the_connection_is_not_reused(public_repo_hub):
    """Half of a declared 1 MiB push/objects body, then the client stops sending: 400, a JSON error."""
    server, token = public_repo_hub
    content = os.urandom(MiB)
    body = msgpack.packb({"objects": [{"object_id": hashlib.sha256(content).hexdigest(), "content": content}]},
                         use_bin_type=True)
    host, port = server.url.removeprefix("http://").split(":")
    head = (f"POST /alice/song/push/objects HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/x-msgpack\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body[:len(body) // 2])
        sock.shutdown(socket.SHUT_WR)
        answer = read_answer(sock, 30)
    status, reply = int(answer.split(b" ", 2)[1]), answer.split(b"\r\n\r\n", 1)[1]
    assert status == 400 and json.loads(reply)["error"] == "malformed_body", answer[:300]


def _fetch_request(host: str, body: bytes) -> bytes:
    return (f"POST /alice/song/fetch/mpack HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def test_small_bodies_that_arrived_with_their_headers_leave_pipelined_requests_intact(public_repo_hub):
    """Two fetch/mpack bodies (taken from gunicorn's buffer, gunicorn_body.taken_as_arrived) and a GET /healthz sent in one
    write on one connection: three answers, in order, each the one its request asks for."""
    server, _ = public_repo_hub
    host, port = server.url.removeprefix("http://").split(":")
    unknown = json.dumps({"want": ["no-such-branch"], "have": []}).encode()
    malformed = b'{"want": 7}'
    healthz = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(_fetch_request(host, unknown) + _fetch_request(host, malformed) + healthz)
        (first, first_reply), (second, second_reply), (third, third_reply) = _responses(sock, 3)
    assert first == 404 and json.loads(first_reply)["error"] == "unknown_commits", first_reply
    assert second == 400 and json.loads(second_reply)["error"] == "invalid_field", second_reply
    assert third == 200 and json.loads(third_reply)["status"] == "ok"


def test_a_small_body_that_arrives_after_its_headers_is_read_whole(public_repo_hub):
    """The headers, a pause, then the body in two pieces: gunicorn's buffer does not hold the body, so it is
    read under a reader and a deadline — and answered as if it had come at once."""
    server, _ = public_repo_hub
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"want": ["no-such-branch"], "have": []}).encode()
    request = _fetch_request(host, body)
    head = request[:len(request) - len(body)]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        time.sleep(0.2)  # what is sent later cannot be in the buffer the headers were parsed from
        sock.sendall(body[:10])
        time.sleep(0.1)
        sock.sendall(body[10:])
        [(status, reply)] = _responses(sock, 1)
    assert status == 404 and json.loads(reply)["error"] == "unknown_commits", reply


def big_pack(server: LiveHub, owner: str = "alice") -> dict:
    """Push one 24 MiB file to a new public repo of a new user ``owner``; → the fetch answer for its pack."""
    token = server.create_user(owner)
    server.create_repo(token, "song")
    history = History()
    history.commit({"big.bin": os.urandom(24 * MiB)})
    push_like_cli(server, token, f"/{owner}/song", history, history.commits)
    return server.call("POST", f"/{owner}/song/fetch/mpack", {"want": ["main"], "have": []}, as_json=True).data()


def stalled_download(url: str, receive_buffer: int | None = 4096) -> socket.socket:
    """A GET of a signed pack URL from a client that then reads nothing (by default with a tiny receive window)."""
    host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((host, int(port)))
    path = "/" + url.removeprefix("http://").split("/", 1)[1]
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


def test_clients_that_stop_reading_downloads_leave_the_worker_answering(tmp_path):
    """Three readers of a 24 MB pack that read nothing, against one worker of two threads: before, they held
    both threads (sendfile blocks) and /healthz timed out. Now a worker keeps a thread from downloads (one
    download slot here, the others get 503 at once) and a download whose client reads nothing for
    MPACKHUB_SEND_TIMEOUT is cut."""
    send_timeout = 1.0
    with live_hub(tmp_path / "hub", workers=1, env={"MPACKHUB_THREADS": "2", "MPACKHUB_JOB_THREADS": "0",
                                                     "MPACKHUB_SEND_TIMEOUT": str(send_timeout)}) as server:
        answer = big_pack(server)
        stalled = [stalled_download(answer["mpack_url"]) for _ in range(3)]
        try:
            started = time.monotonic()
            assert server.call("GET", "/healthz", as_json=True).status == 200
            assert time.monotonic() - started < send_timeout + 2.0
            # While nobody reads: the download's access line appears once the hub has given up on it.
            cut = wait_for_access_line(server.log_path, "/mpacks/", deadline=send_timeout + 20)
            answers = [read_answer(sock, 30) for sock in stalled]
        finally:
            for sock in stalled:
                sock.close()
    assert cut["status"] == 200 and cut["bytes"] < answer["size_bytes"], cut  # a cut sendfile counts 0
    logged = [json.loads(line) for line in server.log_path.read_text().splitlines()]
    assert any(entry.get("msg") == "download cut: the client stopped reading" and entry["level"] == "warning"
               for entry in logged)
    assert not [entry for entry in logged if entry["level"] == "error"], "a stalled client is not an error here"
    statuses = sorted(int(a.split(b" ", 2)[1]) for a in answers)
    assert statuses == [200, 503, 503], statuses
    assert len(next(a for a in answers if a.startswith(b"HTTP/1.1 200"))) < answer["size_bytes"]


def test_a_client_that_trickles_a_download_is_cut_at_its_deadline(tmp_path):
    """A reader that keeps reading a little (never stalling for MPACKHUB_SEND_TIMEOUT) would hold its thread
    for as long as it liked; a download must now end within send_timeout + size / MPACKHUB_DOWNLOAD_MIN_RATE
    (here 2 + 24 MiB / 16 MiB/s = 3.5 s, where this reader needs ~8 s), and the hub says so in its log."""
    env = {"MPACKHUB_THREADS": "2", "MPACKHUB_JOB_THREADS": "0", "MPACKHUB_SEND_TIMEOUT": "2",
           "MPACKHUB_DOWNLOAD_MIN_RATE": str(16 * MiB)}
    with live_hub(tmp_path / "hub", workers=1, env=env) as server:
        answer = big_pack(server)
        sock = stalled_download(answer["mpack_url"], receive_buffer=None)
        received, started = 0, time.monotonic()
        try:
            sock.settimeout(10)
            while time.monotonic() - started < 60:
                piece = sock.recv(64 * 1024)  # ≤ 3.2 MB/s: steady, a fifth of the minimum rate
                if not piece:
                    break
                received += len(piece)
                time.sleep(0.02)
            elapsed = time.monotonic() - started
        finally:
            sock.close()
        cut = wait_for_log_line(server.log_path, "download cut: below the minimum rate", deadline=10)
    assert received < answer["size_bytes"] and 3.0 < elapsed < 20.0, (received, elapsed)
    assert cut["level"] == "warning" and cut["remote"] == "127.0.0.1" and cut["bytes"] == answer["size_bytes"], cut


def wait_for_log_line(log_path: Path, message: str, *, deadline: float) -> dict:
    """The first app log entry with that message, polled for."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        for line in log_path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("msg") == message:
                return entry
        time.sleep(0.05)
    raise AssertionError(f"no log line {message!r} within {deadline} s")


def wait_for_access_line(log_path: Path, path_prefix: str, *, deadline: float, status: int = 200) -> dict:
    """The first access-log entry with that status for a path starting with ``path_prefix``, polled for."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        for line in log_path.read_text().splitlines():
            entry = json.loads(line)
            if (entry.get("logger") == "gunicorn.access" and str(entry.get("path", "")).startswith(path_prefix)
                    and entry.get("status") == status):
                return entry
        time.sleep(0.05)
    raise AssertionError(f"no {status} access line for {path_prefix} within {deadline} s")
