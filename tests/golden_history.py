"""A small fixed Muse history for the v1 → v2 layout comparison (tests/test_format_v2_e2e.py).

Merges, deletions, renames, empty files, unicode paths and a blob of more
than one pack chunk, in two pushes: ``part1`` is cloned, ``part2`` fetched and
pulled. Every id, timestamp and byte is fixed, so the layout a client writes
for it is fixed too; ``tests/data/v1_layout_golden.json`` records what the v1
client (format version 1, commit b94dca1) wrote.
"""
from __future__ import annotations

from tests.factories import History


def _text(name: str, lines: int) -> bytes:
    return "".join(f"{name} line {n}: ünïcödé ♪ {n * n}\n" for n in range(lines)).encode("utf-8")


def golden_history() -> tuple[History, int]:
    """→ (history, index of the first commit of the second push)."""
    h = History()
    h.commit({"README.md": b"# Golden\n", "empty.txt": b"", "src/main.py": _text("main", 40),
              "donn\u00e9es/\u00e9t\u00e9.txt": "cr\u00e8me br\u00fbl\u00e9e\n".encode(),
              "\u97f3\u697d/\u66f2.mid": bytes(range(256)) * 16, "stems/big.wav": bytes(range(251)) * 5000})
    base = h.commit({"src/util.py": _text("util", 30), "README.md": b"# Golden\n\nsecond\n"})
    h.commit({"feature/a.txt": b"a\n", "src/main.py": _text("main", 41), "feature/empty": b""})
    side2 = h.commit({"feature/b \u2014 \u00e9.txt": _text("b", 3)})
    main_files = h.snapshots[base["snapshot_id"]]["manifest"]
    h.commit({"docs/guide.md": _text("guide", 12), "empty.txt": None}, parents=[base["commit_id"]],
                     files=main_files)
    renamed = dict(h.files)
    renamed["lib/util.py"] = renamed.pop("src/util.py")  # a rename: same blob, new path
    main3 = h.commit({}, files=renamed, message="rename src/util.py -> lib/util.py")
    merged = {**h.snapshots[side2["snapshot_id"]]["manifest"], **h.files}
    merged.pop("src/util.py", None)
    merged["src/main.py"] = h.blob(_text("main", 42))
    h.commit({}, parents=[main3["commit_id"], side2["commit_id"]], files=merged, message="merge feature")
    split = len(h.commits)
    h.commit({"stems/big.wav": None, "stems/bigger.wav": bytes(range(241)) * 6000, "\u00e9/\u00e8/\u00ea.txt": b""})
    moved = dict(h.files)
    moved["\u97f3\u697d/\u65b0\u66f2.mid"] = moved.pop("\u97f3\u697d/\u66f2.mid")
    h.commit({"README.md": b"# Golden\n\nthird\n"}, files=moved, message="rename unicode")
    h.commit({"feature/a.txt": None, "feature/b \u2014 \u00e9.txt": None, "feature/empty": None})
    return h, split
