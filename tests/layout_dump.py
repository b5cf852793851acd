"""The bytes of a clone's Muse layout, for comparing two clients' output exactly."""
from __future__ import annotations

import hashlib
from pathlib import Path

# Differ between any two clones by design: repo.json's created_at, config.toml's URL.
VARYING = {".muse/repo.json", ".muse/config.toml"}


def layout_digests(root: Path) -> dict[str, str]:
    """{relative path: sha256 hex of its bytes} for every file of the clone (work tree and .muse)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).as_posix() not in VARYING}
