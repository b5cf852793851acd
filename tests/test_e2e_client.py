"""The client against a real gunicorn: clone, fetch, pull, push, verify, and pack downloads that break off or are altered."""
from __future__ import annotations

import argparse
import hashlib
import http.client
import http.server
import json
import re
import threading
from pathlib import Path
from urllib.parse import urlsplit

import msgpack
import pytest

from bench.live_hub import LiveHub, live_hub, push_like_cli
from mpack import cli
from mpack.client import commands as client_cli
from mpack.client import sync
from mpack.client.hub_client import ClientError, HubClient, TransportError
from mpack.client.layout import MuseRepo
from mpack.format import ids
from mpack.format.errors import MuseError
from tests.database import database_url
from tests.factories import History

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("client") / "hub"
    with live_hub(home, workers=2, env={"MPACKHUB_DATABASE_URL": database_url(home)}) as hub:
        yield hub


@pytest.fixture(autouse=True)
def no_token_in_env(monkeypatch):
    monkeypatch.delenv("MPACKHUB_TOKEN", raising=False)


def work_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".muse" not in p.relative_to(root).parts}


def expected_tree(history: History, manifest: dict[str, str] | None = None) -> dict[str, bytes]:
    return {path: history.blobs[object_id] for path, object_id in (manifest or history.files).items()}


def local_commit(repo: MuseRepo, parent: str, changes: dict[str, bytes], message: str) -> dict:
    """A commit written straight into the clone with Muse's id rules, as the Muse CLI would."""
    parent_record = repo.read_commit(parent)
    manifest = dict(repo.read_snapshot(parent_record["snapshot_id"])["manifest"])
    for path, content in changes.items():
        object_id = ids.object_digest(content)
        repo.write_object(object_id, content)
        manifest[path] = object_id
    snapshot_id = ids.snapshot_digest(manifest)
    committed_at = "2026-12-01T10:00:00.000001+00:00"
    repo.write_snapshot({"snapshot_id": snapshot_id, "manifest": manifest, "created_at": committed_at})
    commit = {"commit_id": ids.commit_digest([parent], snapshot_id, message, committed_at), "repo_id": "local",
              "branch": "main", "snapshot_id": snapshot_id, "message": message, "committed_at": committed_at,
              "parent_commit_id": parent, "parent2_commit_id": None, "author": "ada", "metadata": {}}
    repo.write_commit(commit)
    return commit


def fifty_commits() -> History:
    history = History()
    for n in range(50):
        changes = {f"dir{n % 5}/track{n}.mid": f"notes {n}\n".encode() * (n + 1), "README": f"version {n}".encode()}
        if n == 10:
            changes["empty.txt"] = b""
        if n == 20:
            changes["stems/big.wav"] = bytes(range(256)) * 6000  # 1.5 MiB: more than one chunk
        history.commit(changes)
    return history


def assert_clone_holds(repo: MuseRepo, history: History) -> None:
    assert work_tree(repo.root) == expected_tree(history)
    for commit in history.commits:
        assert json.loads((repo.muse / "commits" / f"{commit['commit_id']}.json").read_text()) == commit
    for snapshot_id, snapshot in history.snapshots.items():
        assert json.loads((repo.muse / "snapshots" / f"{snapshot_id}.json").read_text()) == snapshot
    for object_id, content in history.blobs.items():
        assert repo.object_path(object_id).read_bytes() == content


def test_clone_fetch_pull_and_push_through_the_hub(server, tmp_path, monkeypatch, capsys):
    token = server.create_user("ada")
    server.create_repo(token, "opus")
    history = fifty_commits()
    push_like_cli(server, token, "/ada/opus", history, history.commits)
    url = f"{server.url}/ada/opus"

    target = tmp_path / "opus"
    assert cli.main(["clone", url, str(target)]) == 0
    repo = MuseRepo(target)
    assert_clone_holds(repo, history)
    assert (repo.muse / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert repo.branch_head("main") == history.tip and repo.remote_head("main") == history.tip
    assert repo.meta()["repo_id"] == server.call("GET", "/ada/opus/refs").data()["repo_id"]
    assert repo.origin_url() == url and repo.config()["remotes"]["origin"]["branch"] == "main"
    assert [p.name for p in tmp_path.iterdir()] == ["opus"]  # no temp directory left beside it

    old_tip = history.tip
    news = [history.commit({"dir1/track1.mid": b"rewritten"}), history.commit({"README": None, "new/part.mid": b"p"}),
            history.commit()]
    push_like_cli(server, token, "/ada/opus", history, news)
    monkeypatch.chdir(target / "dir0")  # the commands find the clone from a subdirectory too
    assert cli.main(["fetch"]) == 0
    assert repo.remote_head("main") == history.tip and repo.branch_head("main") == old_tip
    assert cli.main(["pull"]) == 0
    assert repo.branch_head("main") == history.tip
    assert_clone_holds(repo, history)

    mine = local_commit(repo, history.tip, {"dir0/mine.mid": b"from the clone"}, "a local commit")
    repo.set_branch_head("main", mine["commit_id"])
    assert cli.main(["push", "--token", token]) == 0
    assert server.call("GET", "/ada/opus/refs").data()["branch_heads"] == {"main": mine["commit_id"]}
    assert repo.remote_head("main") == mine["commit_id"]

    rival = local_commit(repo, history.tip, {"dir0/rival.mid": b"elsewhere"}, "a diverging commit")
    repo.set_branch_head("main", rival["commit_id"])
    capsys.readouterr()
    assert cli.main(["push", "--token", token]) == 1
    assert capsys.readouterr().err == "mpackhub: rejected: non-fast-forward (fetch and pull first, or push --force)\n"
    assert cli.main(["pull"]) == 1
    assert capsys.readouterr().err.startswith("mpackhub: diverged: merge with the Muse CLI")
    assert repo.branch_head("main") == rival["commit_id"]


def download_pack(server: LiveHub, path: str, want: str) -> tuple[dict, bytes]:
    answer = server.call("POST", f"{path}/fetch/mpack", {"want": [want], "have": []}).data()
    reply = server.call("GET", answer["mpack_url"])
    assert reply.status == 200
    return answer, reply.body


def test_verify_accepts_a_served_pack_and_refuses_a_corrupted_one(server, tmp_path, capsys):
    token = server.create_user("vera")
    server.create_repo(token, "checks")
    history = History().linear(5)
    push_like_cli(server, token, "/vera/checks", history, history.commits)
    answer, data = download_pack(server, "/vera/checks", "main")
    good = tmp_path / "good.mpack"
    good.write_bytes(data)
    assert cli.main(["verify", str(good)]) == 0
    assert "5 commits" in capsys.readouterr().out
    bad = tmp_path / "bad.mpack"
    bad.write_bytes(data[:100] + bytes([data[100] ^ 0x40]) + data[101:])
    assert cli.main(["verify", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mpackhub: ") and err.count("\n") == 1
    assert cli.main(["verify", str(tmp_path / "absent.mpack")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_a_private_repo_needs_a_token_and_a_failed_clone_leaves_nothing(server, tmp_path, capsys):
    token = server.create_user("priv")
    server.create_repo(token, "secret", "private")
    history = History().linear(3)
    push_like_cli(server, token, "/priv/secret", history, history.commits)
    url = f"{server.url}/priv/secret"
    assert cli.main(["clone", url, str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mpackhub: HTTP 404") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "yes").mkdir()  # an empty directory is a fine target
    assert cli.main(["clone", url, str(tmp_path / "yes"), "--token", token]) == 0
    assert work_tree(tmp_path / "yes") == expected_tree(history)
    assert cli.main(["clone", url, str(tmp_path / "yes"), "--token", token]) == 1  # not empty any more
    assert "already exists" in capsys.readouterr().err


def test_a_pack_stream_resumes_from_the_hub_with_a_range(server):
    token = server.create_user("rita")
    server.create_repo(token, "resume")
    history = History()
    history.commit({"noise.bin": hashlib.sha256(b"seed").digest() * 40000})  # 1.2 MiB
    push_like_cli(server, token, "/rita/resume", history, history.commits)
    answer, data = download_pack(server, "/rita/resume", history.tip)
    client = HubClient(f"{server.url}/rita/resume")
    with client.open_pack(answer["mpack_url"]) as stream:
        assert stream.open().total == len(data)
        first = stream.read(len(data) // 2)
        stream._response.close()  # the connection drops here: the next read reconnects with Range
        rest = b"".join(iter(lambda: stream.read(1 << 16), b""))
        assert stream.resumes == 1 and stream.offset == len(data)
    assert first + rest == data


class _PackProxy:
    """A proxy in front of the hub (stdlib http.server) that can break off or alter pack downloads.

    ``cut``: the first pack answer without a Range stops after that many bytes and the
    connection drops (every later one is relayed whole). ``flip``: the byte at that offset
    of every pack answer is altered. ``ranges`` records the Range header of each pack request.
    """

    def __init__(self, upstream: str, *, cut: int | None = None, flip: int | None = None) -> None:
        self.upstream, self.cut, self.flip, self.ranges = urlsplit(upstream), cut, flip, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self):
                self.relay()

            def do_POST(self):
                self.relay()

            def relay(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(owner.upstream.hostname, owner.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                conn.close()
                start = 0
                if self.path.endswith("/fetch/mpack") and reply.status == 200:
                    data = owner.through_here(data, reply.getheader("Content-Type") or "")
                if self.path.startswith("/mpacks/"):
                    owner.ranges.append(self.headers.get("Range"))
                    match = re.match(r"bytes (\d+)-", reply.getheader("Content-Range") or "")
                    start = int(match.group(1)) if match else 0
                    if owner.flip is not None and start <= owner.flip < start + len(data):
                        at = owner.flip - start
                        data = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]
                self.send_response(reply.status)
                for key, value in reply.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "server", "date", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", reply.getheader("Content-Length") if start else str(len(data)))
                self.end_headers()
                if self.path.startswith("/mpacks/") and owner.cut is not None and start == 0:
                    self.wfile.write(data[:owner.cut])  # then the connection drops
                    owner.cut = None
                    return
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def through_here(body: bytes, content_type: str) -> bytes:
        """A fetch/mpack answer whose (absolute) pack URL is made relative, so that it comes through the proxy."""
        answer = json.loads(body) if "json" in content_type else msgpack.unpackb(body, raw=False)
        parts = urlsplit(answer["mpack_url"])
        answer["mpack_url"] = f"{parts.path}?{parts.query}"
        return json.dumps(answer).encode() if "json" in content_type else msgpack.packb(answer, use_bin_type=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def muse_files(repo: MuseRepo) -> dict[str, bytes]:
    return {p.relative_to(repo.muse).as_posix(): p.read_bytes() for p in sorted(repo.muse.rglob("*")) if p.is_file()}


def test_a_clone_whose_pack_download_breaks_off_resumes_mid_pack_and_is_complete(server, tmp_path):
    token = server.create_user("cora")
    server.create_repo(token, "cut")
    history = fifty_commits()
    push_like_cli(server, token, "/cora/cut", history, history.commits)
    answer, data = download_pack(server, "/cora/cut", "main")
    cut = len(data) * 2 // 3  # inside the snapshot and commit records, after the blobs
    proxy = _PackProxy(server.url, cut=cut)
    with proxy as base:
        url = f"{base}/cora/cut"
        cloned = sync.clone(url, tmp_path / "cut", HubClient(url))
    assert proxy.ranges == [None, f"bytes={cut}-"]  # broke off once, resumed where the reader was
    assert cloned.head == history.tip
    assert_clone_holds(MuseRepo(tmp_path / "cut"), history)
    assert [p.name for p in tmp_path.iterdir()] == ["cut"]
    assert not (tmp_path / "cut" / ".muse" / "tmp").exists()


def test_a_clone_moves_refs_only_once_its_history_is_durable(server, tmp_path, monkeypatch):
    token = server.create_user("dora")
    server.create_repo(token, "durable")
    history = History().linear(6)
    push_like_cli(server, token, "/dora/durable", history, history.commits)
    events = []
    real_durable, real_write_ref = sync.make_durable, MuseRepo._write_ref
    monkeypatch.setattr(sync, "make_durable", lambda paths: (real_durable(paths), events.append(("durable", len(paths)))))
    monkeypatch.setattr(MuseRepo, "_write_ref", lambda self, *a: (events.append(("ref", a[1])), real_write_ref(self, *a)))
    url = f"{server.url}/dora/durable"
    sync.clone(url, tmp_path / "durable", HubClient(url))
    assert events[0][0] == "durable" and events[0][1] >= 6 + 6 + 6  # objects, snapshots, commits of the pack
    assert [kind for kind, _ in events[1:]] == ["ref", "ref"]


def test_a_pack_download_that_keeps_breaking_off_gives_up_and_leaves_nothing(server, tmp_path):
    token = server.create_user("gail")
    server.create_repo(token, "gone")
    history = History().linear(5)
    push_like_cli(server, token, "/gail/gone", history, history.commits)
    with _PackProxy(server.url, cut=100) as base:
        url = f"{base}/gail/gone"
        client = HubClient(url)
        answer = client.fetch_mpack([history.tip], [])
        with client.open_pack(answer["mpack_url"], attempts=1) as stream, pytest.raises(TransportError, match="stopped at 100"):
            b"".join(iter(lambda: stream.read(1 << 16), b""))


def test_a_tampered_pack_stream_applies_nothing(server, tmp_path, capsys):
    token = server.create_user("tess")
    server.create_repo(token, "tamper")
    history = fifty_commits()
    push_like_cli(server, token, "/tess/tamper", history, history.commits[:30])
    url = f"{server.url}/tess/tamper"
    assert cli.main(["clone", url, str(tmp_path / "tamper")]) == 0
    repo = MuseRepo(tmp_path / "tamper")
    before = muse_files(repo)
    old_tip = history.commits[29]["commit_id"]
    push_like_cli(server, token, "/tess/tamper", history, history.commits[30:])
    answer = server.call("POST", "/tess/tamper/fetch/mpack", {"want": [history.tip], "have": [old_tip]}).data()
    proxy = _PackProxy(server.url, flip=answer["size_bytes"] // 2)  # mid-pack, in the fetch's pack and the clone's
    with proxy as base:
        repo.write_config(f"{base}/tess/tamper", "main")
        before = muse_files(repo)
        with pytest.raises(MuseError):
            sync.fetch(repo, HubClient(f"{base}/tess/tamper"))
        assert muse_files(repo) == before  # no object, record or ref moved; no stage left
        assert cli.main(["clone", f"{base}/tess/tamper", str(tmp_path / "again")]) == 1
    assert capsys.readouterr().err.startswith("mpackhub: ")
    assert proxy.ranges == [None, None]  # each pack came through the proxy, altered
    assert [p.name for p in tmp_path.iterdir()] == ["tamper"]  # the failed clone left nothing beside it


def test_tokens_never_travel_over_plain_http_to_another_host(monkeypatch):
    with pytest.raises(ClientError, match="plain http"):
        HubClient("http://hub.example.com/o/r", "secret")
    assert HubClient("https://hub.example.com/o/r", "secret").token == "secret"
    assert HubClient("http://[::1]:8000/o/r", "secret").token == "secret"
    monkeypatch.setenv("MPACKHUB_TOKEN", "from-env")
    args = argparse.Namespace(token=None)
    assert client_cli._client("http://hub.example.com/o/r", args).token is None
    assert client_cli._client("http://localhost:9/o/r", args).token == "from-env"
