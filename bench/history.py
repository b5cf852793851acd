"""A Muse history built in memory with real ids: the factory the tests and the benches share."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from mpack.format import ids


@dataclass
class History:
    """A Muse history built in memory: commit records, snapshots and blobs with real ids."""

    prefix: str = ""  # "" for bare hex ids (the CLI), "sha256:" for the newer spelling
    files: dict[str, str] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)
    snapshots: dict[str, dict] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    _tick: itertools.count = field(default_factory=itertools.count)

    def blob(self, content: bytes) -> str:
        object_id = self.prefix + ids.object_digest(content)
        self.blobs[object_id] = content
        return object_id

    def commit(self, changes: dict[str, bytes | None] | None = None, *, parents: list[str] | None = None,
               message: str | None = None, files: dict[str, str] | None = None) -> dict:
        """A commit on top of ``parents`` (default: the last commit) applying ``changes``."""
        n = next(self._tick)
        if parents is None:
            parents = [self.commits[-1]["commit_id"]] if self.commits else []
        manifest = dict(self.files if files is None else files)
        for path, content in (changes if changes is not None else {f"file{n}.txt": f"content {n}\n".encode()}).items():
            if content is None:
                manifest.pop(path, None)
            else:
                manifest[path] = self.blob(content)
        snapshot_id = self.prefix + ids.snapshot_digest(manifest)
        committed_at = (datetime(2026, 11, 24, tzinfo=timezone.utc) + timedelta(seconds=n, microseconds=n)).isoformat()
        message = message or f"commit {n}"
        record = {
            "commit_id": self.prefix + ids.commit_digest(parents, snapshot_id, message, committed_at),
            "repo_id": "test", "branch": "main", "snapshot_id": snapshot_id, "message": message,
            "committed_at": committed_at, "parent_commit_id": parents[0] if parents else None,
            "parent2_commit_id": parents[1] if len(parents) > 1 else None, "author": "gabriel",
            "metadata": {"n": str(n)},
        }
        self.snapshots[snapshot_id] = {"snapshot_id": snapshot_id, "manifest": manifest, "created_at": committed_at}
        self.commits.append(record)
        self.files = manifest
        return record

    def linear(self, count: int) -> History:
        for _ in range(count):
            self.commit()
        return self

    @property
    def tip(self) -> str:
        return self.commits[-1]["commit_id"]

    def bundle(self, commits: list[dict] | None = None, *, with_objects: bool = True) -> dict:
        """A push bundle as the CLI builds it: commits tip-first, their snapshots, their new blobs."""
        commits = list(reversed(commits if commits is not None else self.commits))
        snapshots = [self.snapshots[c["snapshot_id"]] for c in commits]
        wanted = {o for s in snapshots for o in s["manifest"].values()}
        objects = [{"object_id": o, "content": self.blobs[o]} for o in sorted(wanted)] if with_objects else []
        return {"commits": commits, "snapshots": snapshots, "objects": objects}
