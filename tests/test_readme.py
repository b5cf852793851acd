"""The README works verbatim: its first session runs with bash against a hub started as it says.

The shell blocks marked ``<!-- first-session -->`` are run as written, one
after the other in one bash (``-e``: the first failing command fails the
test), from a fresh checkout-like directory whose ``.venv`` is this test's
virtualenv, with no ``MPACKHUB_*`` variable of ours. Two things differ from a
person's session, and only these: the hub listens on a free port instead of
8000 (``MPACKHUB_BIND`` for ``mpackhub serve``, and the README's
``127.0.0.1:8000`` rewritten to it), and in the block marked ``push with the
Muse CLI`` the lines that run ``muse`` give way to a CLI-style push (the same
calls the Muse CLI makes), injected where ``muse push`` stands.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.live_hub import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SESSION = "<!-- first-session -->"
MUSE_BLOCK = "<!-- first-session: push with the Muse CLI -->"
README_URL = "127.0.0.1:8000"

PUSH_HELPER = '''\
import sys
sys.path.insert(0, {root!r})
from bench.live_hub import LiveHub, push_like_cli
from tests.factories import History

remote, token = sys.argv[1], sys.argv[2]
base, path = remote.rsplit("/", 2)[0], "/" + "/".join(remote.rsplit("/", 2)[1:])
history = History()
history.commit({{"take.txt": b"first take\\n"}}, message="first take")
answer = push_like_cli(LiveHub(base, None, "", None), token, path, history, history.commits)
print("pushed", answer["branch_heads"])
'''


def shell_blocks(text: str) -> list[tuple[str, str]]:
    """(marker, body) of every ```sh block, with the HTML comment just before it ('' if none)."""
    pattern = re.compile(r"(?:(<!--[^>]*-->)\s*\n)?```sh\n(.*?)```", re.S)
    return [(m.group(1) or "", m.group(2)) for m in pattern.finditer(text)]


def session_script(text: str, port: int, push_command: str) -> str:
    parts = []
    for marker, body in shell_blocks(text):
        if marker == SESSION:
            parts.append(body)
        elif marker == MUSE_BLOCK:
            parts.append(without_muse(body, push_command))
    assert len(parts) >= 2, "the README lost its first-session blocks"
    return "\n".join(parts).replace(README_URL, f"127.0.0.1:{port}")


def without_muse(body: str, push_command: str) -> str:
    """The Muse CLI block with its ``muse`` lines dropped and the push injected where ``muse push`` is."""
    lines = []
    for line in body.splitlines():
        if re.search(r"(^|[;&|]\s*|\s)muse\s+push\b", line):
            lines.append(push_command)
        elif not re.search(r"(^|[;&|=]\s*|\s)muse\s", line) and "MUSE_TOKEN" not in line:
            lines.append(line)
    assert push_command in lines, "the Muse CLI block no longer says `muse push`"
    return "\n".join(lines) + "\n"


def muse_remote(text: str) -> str:
    body = next(b for m, b in shell_blocks(text) if m == MUSE_BLOCK)
    return re.search(r"muse remote add origin (\S+)", body).group(1)


def new_shell_env(home: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MPACKHUB_", "VIRTUAL_ENV", "PYTHON"))}
    environ.update(HOME=str(home), TMPDIR=str(home / "tmp"))
    return environ




@pytest.fixture
def checkout(tmp_path) -> Path:
    """A directory standing for the checkout after the README's install command: its .venv is ours."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "mpackhub").is_file():
        pytest.skip(f"the tests do not run from a virtualenv with mpackhub installed ({venv})")
    where = tmp_path / "checkout"
    where.mkdir()
    (where / ".venv").symlink_to(venv)
    return where


def serve_command(text: str) -> str:
    """The part of the README's first command that starts the hub (the install before it is done)."""
    first = shell_blocks(text)[0][1].strip()
    assert first == "python3 -m venv .venv && .venv/bin/pip install -q . && .venv/bin/mpackhub serve"
    return first.split("&&")[-1].strip()


@pytest.mark.e2e
def test_the_first_session_runs_verbatim_against_a_hub_started_as_the_readme_says(checkout, tmp_path):
    text = README.read_text()
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    env = new_shell_env(home)
    port = free_port()
    # Append mode: the server shares this file's offset, and reading it back (seek) must not make it overwrite.
    log = open(tmp_path / "serve.log", "a+")  # noqa: SIM115 — closed below
    server = subprocess.Popen(["bash", "-c", serve_command(text)], cwd=checkout, stdout=log, stderr=log,
                              env={**env, "MPACKHUB_BIND": f"127.0.0.1:{port}"}, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server, deadline_s=60.0)
        helper = tmp_path / "push_like_the_muse_cli.py"
        helper.write_text(PUSH_HELPER.format(root=str(ROOT)))
        remote = muse_remote(text).replace(README_URL, f"127.0.0.1:{port}")
        push = f'{shlex.quote(sys.executable)} {shlex.quote(str(helper))} {shlex.quote(remote)} "$TOKEN"'
        script = session_script(text, port, push)
        done = subprocess.run(["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", script],
                              cwd=checkout, env=env, capture_output=True, text=True, timeout=120)
        log.seek(0)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n--- serve:\n{log.read()}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()

    out = done.stdout
    assert '"name": "song"' in out or '"name":"song"' in out
    assert "pushed {'main':" in out
    assert "cloned main at " in out and "take.txt\n" in out
    assert "main: up to date" in out and "main: everything up to date" in out
    assert '"dry_run": false' in out
    clones = list((home / "tmp").glob("*/song-copy"))
    assert len(clones) == 1 and (clones[0] / "take.txt").read_text() == "first take\n"
    assert not (clones[0] / "var").exists()  # gc inside the clone acted on the served hub, created none
    assert sorted(p.name for p in checkout.iterdir()) == [".venv", "var"]
    served = (tmp_path / "serve.log").read_text()
    assert f"admin create-user NAME --home {checkout / 'var'}" in served  # the second-terminal commands


def test_the_first_session_blocks_are_marked_and_the_muse_block_pushes():
    text = README.read_text()
    markers = [m for m, _ in shell_blocks(text) if m]
    assert markers == [SESSION, MUSE_BLOCK, SESSION]
    assert muse_remote(text) == f"http://{README_URL}/alice/song"
    script = session_script(text, 1234, "PUSH")
    assert "muse " not in script and "\nPUSH\n" in script and README_URL not in script
    assert "cd .." not in script and "../" not in script  # every path absolute: no cd traps


def test_everything_the_readme_links_is_inside_the_repository():
    for doc in (README, ROOT / "docs" / "protocol.md"):
        for target in re.findall(r"\]\(([^)#\s]+)", doc.read_text()):
            assert "://" not in target, f"{doc.name} links outside the repository: {target}"
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), f"{doc.name}: broken link {target}"
    assert "../shared" not in README.read_text()


def test_the_readme_says_what_the_muse_cli_cannot_do():
    text = README.read_text()
    section = text[text.index("### Using the Muse CLI with mpackhub"):]
    section = section[:section.index("\n## ")]
    for fact in ("`muse clone` sends no token", "mpackhub clone --token", "muse pull origin main",
                 "drops empty files", "64 MiB", "bundle_too_large"):
        assert fact in section, fact
