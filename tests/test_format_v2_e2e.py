"""A clone through a v2 pack writes the same Muse layout, byte for byte, as the v1 client did.

``tests/data/v1_layout_golden.json`` was written by the v1 client (format
version 1, commit b94dca1) for ``tests.golden_history``: one clone of the first
push, then a fetch and pull of the second (merges, deletions, renames, empty
files, unicode paths, a multi-chunk blob). Regenerate it only from a v1 client:
``python -m tests.test_format_v2_e2e --write DIR`` run on that commit.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from bench.live_hub import live_hub, push_like_cli
from mpack import cli
from tests.golden_history import golden_history
from tests.layout_dump import layout_digests

pytestmark = pytest.mark.e2e

GOLDEN = Path(__file__).parent / "data" / "v1_layout_golden.json"


def clone_and_pull(home: Path, work: Path) -> dict[str, dict[str, str]]:
    """Push part 1, clone, push part 2, fetch + pull → the layout after each step."""
    history, split = golden_history()
    with live_hub(home, workers=1) as server:
        token = server.create_user("golda")
        server.create_repo(token, "golden")
        push_like_cli(server, token, "/golda/golden", history, history.commits[:split])
        target = work / "clone"
        assert cli.main(["clone", f"{server.url}/golda/golden", str(target)]) == 0
        after_clone = layout_digests(target)
        push_like_cli(server, token, "/golda/golden", history, history.commits[split:])
        assert _pull(target) == 0
        return {"clone": after_clone, "pull": layout_digests(target)}


def _pull(target: Path) -> int:
    here = os.getcwd()
    os.chdir(target)
    try:
        return cli.main(["pull"])
    finally:
        os.chdir(here)


def test_v2_clone_and_pull_write_the_v1_layout_byte_for_byte(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    assert clone_and_pull(tmp_path / "hub", tmp_path) == golden


if __name__ == "__main__":
    out = Path(sys.argv[sys.argv.index("--write") + 1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "hub").mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(clone_and_pull(out / "hub", out), indent=1, sort_keys=True, ensure_ascii=False) + "\n")
