"""Clones like the Muse CLI's: every branch, new remote branches become local ones, umask modes, progress."""
from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import stat
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from bench.live_hub import LiveHub, live_hub, push_like_cli
from mpack import cli
from mpack.client import sync
from mpack.client.hub_client import HubClient
from mpack.client.layout import MuseRepo
from mpack.client.progress import Bars
from tests.database import database_url
from tests.factories import History

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("branches") / "hub"
    with live_hub(home, workers=1, env={"MPACKHUB_DATABASE_URL": database_url(home)}) as hub:
        yield hub


@pytest.fixture(autouse=True)
def no_token_in_env(monkeypatch):
    monkeypatch.delenv("MPACKHUB_TOKEN", raising=False)


def manifest(history: History, commit: dict) -> dict[str, str]:
    return history.snapshots[commit["snapshot_id"]]["manifest"]


def on(history: History, parent: dict, changes: dict[str, bytes]) -> dict:
    """A commit on top of ``parent`` whatever the history's last commit was."""
    return history.commit(changes, parents=[parent["commit_id"]], files=manifest(history, parent))


def branchy_repo(server: LiveHub, name: str) -> tuple[str, History, dict[str, dict]]:
    """main (4 commits), dev (2 commits off main's second) and feature/x (1 off main's tip), pushed."""
    token = server.create_user(name)
    server.create_repo(token, "tune")
    history = History()
    main = [history.commit({"a.txt": b"a1\n", "dir/b.txt": b"b1\n"})]
    main += [history.commit({"a.txt": f"a{n}\n".encode()}) for n in range(2, 5)]
    push_like_cli(server, token, f"/{name}/tune", history, main)
    dev1 = on(history, main[1], {"dev.txt": b"dev 1\n"})
    dev2 = on(history, dev1, {"dir/b.txt": b"b on dev\n"})
    push_like_cli(server, token, f"/{name}/tune", history, [dev1, dev2], branch="dev")
    feature = on(history, main[-1], {"x.txt": b"x\n"})
    push_like_cli(server, token, f"/{name}/tune", history, [feature], branch="feature/x")
    return token, history, {"main": main[-1], "dev": dev2, "feature/x": feature}


def work_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".muse" not in p.relative_to(root).parts}


def expected_tree(history: History, tip: dict) -> dict[str, bytes]:
    return {path: history.blobs[oid] for path, oid in manifest(history, tip).items()}


def wait_for_prebuilds(server: LiveHub, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        counts = server.call("GET", "/admin/jobs", token=server.admin_token, as_json=True).data()["counts"]
        if not counts.get("pending") and not counts.get("running"):
            return
        time.sleep(0.05)
    raise AssertionError("the prebuilds did not finish")


class RecordingClient(HubClient):
    """The real client, noting each fetch/mpack answer (to see which packs came from the cache)."""

    answers: list[dict]

    def fetch_mpack(self, want, have):
        answer = super().fetch_mpack(want, have)
        self.answers.append(answer)
        return answer


def recording(url: str) -> RecordingClient:
    client = RecordingClient(url)
    client.answers = []
    return client


def test_clone_brings_every_branch_and_checks_out_the_default(server, tmp_path, capsys):
    _, history, tips = branchy_repo(server, "ann")
    target = tmp_path / "tune"
    assert cli.main(["clone", f"{server.url}/ann/tune", str(target)]) == 0
    assert capsys.readouterr().out.endswith("; branches also: dev, feature/x\n")
    repo = MuseRepo(target)
    heads = {name: tip["commit_id"] for name, tip in tips.items()}
    assert repo.branches() == heads
    assert repo.remote_heads() == heads
    assert repo.current_branch() == "main"
    assert work_tree(target) == expected_tree(history, tips["main"])
    assert all(repo.has_commit(c["commit_id"]) for c in history.commits)


def test_clone_branch_checks_out_that_branch_and_single_branch_brings_only_it(server, tmp_path):
    _, history, tips = branchy_repo(server, "bo")
    url = f"{server.url}/bo/tune"
    assert cli.main(["clone", "--branch", "dev", url, str(tmp_path / "all")]) == 0
    everything = MuseRepo(tmp_path / "all")
    assert everything.current_branch() == "dev" and set(everything.branches()) == {"main", "dev", "feature/x"}
    assert work_tree(tmp_path / "all") == expected_tree(history, tips["dev"])
    assert everything.config()["remotes"]["origin"]["branch"] == "dev"

    assert cli.main(["clone", "--single-branch", "-b", "dev", url, str(tmp_path / "one")]) == 0
    single = MuseRepo(tmp_path / "one")
    assert single.branches() == {"dev": tips["dev"]["commit_id"]}
    assert single.remote_heads() == {"dev": tips["dev"]["commit_id"]}
    assert not single.has_commit(tips["main"]["commit_id"])  # main's later commits never came
    assert work_tree(tmp_path / "one") == expected_tree(history, tips["dev"])


def test_clone_takes_the_prebuilt_pack_first_then_deltas_the_next_clone_finds_cached(server, tmp_path):
    _, history, tips = branchy_repo(server, "cy")
    wait_for_prebuilds(server)
    first = recording(f"{server.url}/cy/tune")
    sync.clone(first.url, tmp_path / "one", first)
    assert [a["cached"] for a in first.answers] == [True, False, False]  # main's prebuilt pack, then two deltas
    assert first.answers[0]["commit_count"] == 4
    assert sum(a["commit_count"] for a in first.answers) == len(history.commits)  # nothing sent twice
    again = recording(f"{server.url}/cy/tune")
    sync.clone(again.url, tmp_path / "two", again)
    assert [a["cached"] for a in again.answers] == [True, True, True]
    assert [a["mpack_id"] for a in again.answers] == [a["mpack_id"] for a in first.answers]


def test_fetch_and_pull_make_local_branches_of_new_remote_branches(server, tmp_path, monkeypatch, capsys):
    token, history, tips = branchy_repo(server, "dee")
    target = tmp_path / "tune"
    assert cli.main(["clone", "--single-branch", f"{server.url}/dee/tune", str(target)]) == 0
    repo = MuseRepo(target)
    late = on(history, tips["main"], {"late.txt": b"late\n"})
    push_like_cli(server, token, "/dee/tune", history, [late], branch="late")
    monkeypatch.chdir(target)
    capsys.readouterr()
    assert cli.main(["fetch"]) == 0
    out = capsys.readouterr().out
    assert "new branch late (from origin/late)\n" in out and "new branch dev (from origin/dev)\n" in out
    assert repo.branches() == {"main": tips["main"]["commit_id"], "dev": tips["dev"]["commit_id"],
                               "feature/x": tips["feature/x"]["commit_id"], "late": late["commit_id"]}
    assert repo.current_branch() == "main" and work_tree(target) == expected_tree(history, tips["main"])

    (repo.muse / "refs" / "heads" / "late").unlink()  # deleted on purpose: not brought back
    later = on(history, tips["main"], {"later.txt": b"later\n"})
    push_like_cli(server, token, "/dee/tune", history, [later], branch="later")
    capsys.readouterr()
    assert cli.main(["pull"]) == 0
    assert set(repo.branches()) == {"main", "dev", "feature/x", "later"}
    assert repo.branch_head("later") == later["commit_id"]


def test_fetch_leaves_the_checked_out_branch_of_an_empty_clone_to_pull(server, tmp_path, monkeypatch):
    token = server.create_user("eve")
    server.create_repo(token, "blank")
    target = tmp_path / "blank"
    assert cli.main(["clone", f"{server.url}/eve/blank", str(target)]) == 0
    history = History()
    first = history.commit({"song.txt": b"la\n"})
    push_like_cli(server, token, "/eve/blank", history, [first])
    monkeypatch.chdir(target)
    repo = MuseRepo(target)
    assert cli.main(["fetch"]) == 0
    assert repo.branch_head("main") is None  # not moved without its files
    assert cli.main(["pull"]) == 0
    assert repo.branch_head("main") == first["commit_id"] and work_tree(target) == {"song.txt": b"la\n"}


def modes(root: Path) -> tuple[set[int], set[int]]:
    files = {stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}
    dirs = {stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")] if p.is_dir()}
    return files, dirs


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                              (0o002, 0o664, 0o775)])
def test_a_clone_and_a_pull_honour_the_umask(server, tmp_path, umask, file_mode, dir_mode):
    token, history, tips = branchy_repo(server, f"fay{umask:o}")
    target = tmp_path / "tune"

    def run(*args: str, cwd: Path) -> None:
        done = subprocess.run(["bash", "-c", f'umask {umask:03o} && exec "$@"', "mpackhub", sys.executable, "-m",
                               "mpack.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    run("clone", f"{server.url}/fay{umask:o}/tune", str(target), cwd=tmp_path)
    assert modes(target) == ({file_mode}, {dir_mode})
    newer = on(history, tips["main"], {"dir/new/deep.txt": b"deep\n", "a.txt": b"changed\n"})
    push_like_cli(server, token, f"/fay{umask:o}/tune", history, [newer])
    run("pull", cwd=target)
    assert (target / "dir" / "new" / "deep.txt").read_bytes() == b"deep\n"
    assert modes(target) == ({file_mode}, {dir_mode})


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal_and_not_when_quiet():
    assert Bars(io.StringIO())("clone main: download") is None
    assert Bars(FakeTerminal(), quiet=True)("clone main: download") is None
    screen = FakeTerminal()
    bar = Bars(screen)("clone main: download")
    for done in range(0, 3 << 20, 1 << 18):
        bar(done + (1 << 18), 3 << 20)
    bar.close()
    drawn = screen.getvalue()
    assert "clone main: download" in drawn and "100%" in drawn and "3.00M" in drawn and "B/s" in drawn


def run_on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """The CLI with stderr on a pseudo-terminal (as in an interactive shell) → (exit, stdout, what the terminal showed)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    process = subprocess.Popen([sys.executable, "-m", "mpack.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                               stderr=follower, text=True)
    os.close(follower)
    shown = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            shown += chunk
        elif process.poll() is not None:
            break
    os.close(leader)
    out = process.stdout.read()
    process.stdout.close()
    return process.wait(timeout=10), out, shown.decode(errors="replace")


def test_the_cli_draws_download_and_apply_progress_on_a_terminal_only(server, tmp_path):
    branchy_repo(server, "gus")
    url = f"{server.url}/gus/tune"
    code, _, shown = run_on_a_terminal(["clone", url, str(tmp_path / "a")], tmp_path)
    assert code == 0
    for label in ("clone main: download and apply", "clone dev: download and apply", "clone feature/x: download and apply"):
        assert label in shown
    assert "100%" in shown and "B/s" in shown
    code, _, shown = run_on_a_terminal(["clone", "--quiet", url, str(tmp_path / "b")], tmp_path)
    assert (code, shown) == (0, "")
    piped = subprocess.run([sys.executable, "-m", "mpack.cli", "clone", url, str(tmp_path / "c")], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and piped.stderr == ""
