"""The Muse on-disk layout (PROTOCOL.md, "The Muse on-disk layout") for our client's clones.

``MuseRepo`` reads and writes one repository: ``.muse/repo.json``, ``HEAD``,
``refs/heads/*``, ``remotes/origin/*``, ``commits/*.json``,
``snapshots/*.json``, ``objects/<2 hex>/<62 hex>`` and ``config.toml``, plus
the work tree next to ``.muse``. Guarantees:

- every file is written to a temp file in its directory and renamed into
  place, so a reader never sees half a ref, record or object;
- objects are stored under the hex digest whatever the id spelling, and bytes
  written through ``write_object`` are re-hashed first;
- branch names are validated before they become paths, and a checkout refuses
  any manifest path that could escape the work tree (absolute, ``..``, into
  ``.muse``, or through a symlink) before it writes a single file.
"""
from __future__ import annotations

import json
import os
import tomllib
from collections import deque
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from mpack.client.errors import LayoutError, NotARepo, UnsafePath
from mpack.client.files import atomic_write, file_digest, unlink_quietly
from mpack.client.worktree import MUSE_DIR, WorkTree
from mpack.format import ids, rules

__all__ = ["LayoutError", "MuseRepo", "NotARepo", "UnsafePath", "atomic_write", "file_digest"]

SCHEMA_VERSION = "2"  # what the Muse CLI writes in repo.json


def toml_string(value: str) -> str:
    """A TOML basic string holding ``value`` exactly."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def record_json(kind: str, record: dict) -> bytes:
    """The bytes of a commit or snapshot file, as the v1 client wrote them from a pack.

    Keys sorted at every level (a pack's records were canonical msgpack), commits
    indented, snapshots compact (whole manifests: the C encoder writes them fast).
    """
    try:
        text = json.dumps(record, indent=2 if kind == "commits" else None, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise LayoutError(f"{kind[:-1]} cannot be stored as JSON: {exc}") from None
    return (text + "\n").encode("utf-8")


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


class MuseRepo(WorkTree):
    """One Muse repository: ``root`` is the work tree, ``root/.muse`` the store."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.muse = self.root / MUSE_DIR
        self._object_dirs: set[Path] = set()

    # -- creation and identity -----------------------------------------------------

    @classmethod
    def init(cls, root: Path | str, *, repo_id: str, domain: str, created_at: str | None = None) -> MuseRepo:
        """Create the ``.muse`` tree and ``repo.json`` in ``root`` (which may exist)."""
        repo = cls(root)
        for sub in ("refs/heads", "remotes/origin", "commits", "snapshots", "objects"):
            (repo.muse / sub).mkdir(parents=True, exist_ok=True)
        meta = {"repo_id": repo_id, "schema_version": SCHEMA_VERSION,
                "created_at": created_at or utc_now_iso(), "domain": domain}
        atomic_write(repo.muse / "repo.json", (json.dumps(meta, indent=2) + "\n").encode())
        return repo

    @classmethod
    def find(cls, start: Path | str) -> MuseRepo:
        """The repository containing ``start`` (walking up), else NotARepo."""
        here = Path(start).resolve()
        for candidate in (here, *here.parents):
            if (candidate / MUSE_DIR / "repo.json").is_file():
                return cls(candidate)
        raise NotARepo(here)

    def meta(self) -> dict:
        return self._read_json(self.muse / "repo.json", "repo.json")

    @property
    def tmp_dir(self) -> Path:
        """Scratch space on the repository's file system (renames from here are atomic)."""
        path = self.muse / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- refs ---------------------------------------------------------------------

    def head(self) -> tuple[str, str]:
        """``("branch", name)`` or ``("commit", id)`` from ``HEAD``."""
        try:
            text = (self.muse / "HEAD").read_text("utf-8").strip()
        except FileNotFoundError:
            raise LayoutError(f"{self.muse / 'HEAD'} is missing") from None
        if text.startswith("commit:"):
            return "commit", ids.check_id(text[len("commit:"):].strip(), "HEAD commit")
        ref = text[len("ref:"):].strip() if text.startswith("ref:") else text
        if not ref.startswith("refs/heads/"):
            raise LayoutError(f"cannot read HEAD: {text[:80]!r}")
        return "branch", rules.check_branch_name(ref[len("refs/heads/"):])

    def current_branch(self) -> str | None:
        kind, value = self.head()
        return value if kind == "branch" else None

    def set_head_branch(self, branch: str) -> None:
        rules.check_branch_name(branch)
        atomic_write(self.muse / "HEAD", f"ref: refs/heads/{branch}\n".encode(), durable=True)

    def branch_head(self, branch: str) -> str | None:
        return self._read_ref(self.muse / "refs" / "heads", branch)

    def set_branch_head(self, branch: str, commit_id: str) -> None:
        self._write_ref(self.muse / "refs" / "heads", branch, commit_id)

    def branches(self) -> dict[str, str]:
        return self._refs_under(self.muse / "refs" / "heads")

    def remote_head(self, branch: str, remote: str = "origin") -> str | None:
        return self._read_ref(self.muse / "remotes" / remote, branch)

    def set_remote_head(self, branch: str, commit_id: str, remote: str = "origin") -> None:
        self._write_ref(self.muse / "remotes" / remote, branch, commit_id)

    def remote_heads(self, remote: str = "origin") -> dict[str, str]:
        return self._refs_under(self.muse / "remotes" / remote)

    def _read_ref(self, base: Path, branch: str) -> str | None:
        try:
            text = (base / rules.check_branch_name(branch)).read_text("utf-8").strip()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return ids.check_id(text, f"ref {branch}") if text else None

    def _write_ref(self, base: Path, branch: str, commit_id: str) -> None:
        path = base / rules.check_branch_name(branch)
        atomic_write(path, (ids.check_id(commit_id, "commit id") + "\n").encode(), durable=True)

    def _refs_under(self, base: Path) -> dict[str, str]:
        found = {}
        for path in sorted(base.rglob("*")) if base.is_dir() else ():
            name = path.relative_to(base).as_posix()
            if path.is_file() and not path.name.startswith(".tmp-"):
                head = self._read_ref(base, name)
                if head:
                    found[name] = head
        return found

    # -- objects -------------------------------------------------------------------

    def object_path(self, object_id: str) -> Path:
        digest = ids.hex_of(object_id)
        return self.muse / "objects" / digest[:2] / digest[2:]

    def has_object(self, object_id: str) -> bool:
        return self.object_path(object_id).is_file()

    def read_object(self, object_id: str) -> bytes:
        try:
            return self.object_path(object_id).read_bytes()
        except FileNotFoundError:
            raise LayoutError(f"object {object_id} is missing from {self.muse}") from None

    def write_object(self, object_id: str, content: bytes) -> None:
        """Store blob bytes after checking they hash to ``object_id``."""
        actual = ids.object_digest(content)
        if not ids.same_digest(object_id, actual):
            raise LayoutError(f"object {object_id} does not match its content (sha256 {actual})")
        if not self.has_object(object_id):
            atomic_write(self.object_path(object_id), content)

    def install_object_file(self, object_id: str, source: str | Path) -> Path | None:
        """Rename an already verified file into the store (``source`` on the same file system).

        Returns the new file, or None when the object was there already.
        """
        target = self.object_path(object_id)
        if target.is_file():
            unlink_quietly(Path(source))
            return None
        if target.parent not in self._object_dirs:  # 256 of them: one mkdir each, not one per object
            target.parent.mkdir(parents=True, exist_ok=True)
            self._object_dirs.add(target.parent)
        os.replace(source, target)
        return target

    def install_record_file(self, kind: str, record_id: str, source: str | Path) -> Path | None:
        """Rename a verified record file (``record_json``'s bytes) into ``kind``; None if it was there."""
        if self._record_path(kind, record_id) is not None:
            unlink_quietly(Path(source))  # content-addressed: the same id is the same record
            return None
        target = self.muse / kind / f"{record_id}.json"
        os.replace(source, target)
        return target

    def snapshot_manifest(self, snapshot_id: str) -> dict | None:
        """The manifest of a snapshot this repository holds, else None (a pack's delta base)."""
        if not self.has_snapshot(snapshot_id):
            return None
        manifest = self.read_snapshot(snapshot_id).get("manifest")
        return manifest if isinstance(manifest, dict) else None

    # -- snapshots and commits -----------------------------------------------------

    def _record_path(self, kind: str, record_id: str) -> Path | None:
        """The existing file of a record under either id spelling, else None."""
        for spelling in ids.spellings(record_id):
            path = self.muse / kind / f"{spelling}.json"
            if path.is_file():
                return path
        return None

    def has_commit(self, commit_id: str) -> bool:
        return ids.is_id(commit_id) and self._record_path("commits", commit_id) is not None

    def has_snapshot(self, snapshot_id: str) -> bool:
        return ids.is_id(snapshot_id) and self._record_path("snapshots", snapshot_id) is not None

    def read_commit(self, commit_id: str) -> dict:
        return self._read_record("commits", commit_id)

    def read_snapshot(self, snapshot_id: str) -> dict:
        return self._read_record("snapshots", snapshot_id)

    def write_commit(self, record: dict) -> None:
        self._write_record("commits", ids.check_id(record.get("commit_id"), "commit_id"), record)

    def write_snapshot(self, record: dict) -> None:
        self._write_record("snapshots", ids.check_id(record.get("snapshot_id"), "snapshot_id"), record)

    def all_commit_ids(self) -> list[str]:
        folder = self.muse / "commits"
        names = (p.name[:-len(".json")] for p in folder.glob("*.json")) if folder.is_dir() else ()
        return sorted(name for name in names if ids.is_id(name))

    def _read_record(self, kind: str, record_id: str) -> dict:
        path = self._record_path(kind, ids.check_id(record_id))
        if path is None:
            raise LayoutError(f"{kind[:-1]} {record_id} is missing from {self.muse}")
        return self._read_json(path, f"{kind[:-1]} {record_id}")

    def _write_record(self, kind: str, record_id: str, record: dict) -> None:
        if self._record_path(kind, record_id) is not None:
            return  # content-addressed: the same id is the same record
        try:
            # Snapshots are whole manifests: compact JSON lets the C encoder write them (indent does not).
            data = json.dumps(record, indent=2 if kind == "commits" else None, ensure_ascii=False) + "\n"
        except (TypeError, ValueError) as exc:
            raise LayoutError(f"{kind[:-1]} {record_id} cannot be stored as JSON: {exc}") from None
        atomic_write(self.muse / kind / f"{record_id}.json", data.encode("utf-8"))

    @staticmethod
    def _read_json(path: Path, what: str) -> dict:
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise LayoutError(f"{what} is missing: {path}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise LayoutError(f"{what} is not valid JSON ({path}): {exc}") from None
        if not isinstance(data, dict):
            raise LayoutError(f"{what} is not a JSON object: {path}")
        return data

    # -- history -------------------------------------------------------------------

    def walk(self, head: str, *, stop: set[str] = frozenset()) -> Iterator[dict]:
        """Commits reachable from ``head``, breadth-first (``head`` first), each once.

        ``stop`` holds hex digests not to enter; commits missing locally end the walk there.
        """
        seen = set(stop)
        queue = deque([head])
        while queue:
            commit_id = queue.popleft()
            digest = ids.hex_of(commit_id)
            if digest in seen or not self.has_commit(commit_id):
                continue
            seen.add(digest)
            record = self.read_commit(commit_id)
            yield record
            queue.extend(p for p in (record.get("parent_commit_id"), record.get("parent2_commit_id")) if p)

    def ancestors(self, head: str) -> set[str]:
        """Hex digests of every local commit reachable from ``head`` (itself included)."""
        return {ids.hex_of(record["commit_id"]) for record in self.walk(head)}

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return ids.hex_of(ancestor) in self.ancestors(descendant)

    # -- config --------------------------------------------------------------------

    def write_config(self, url: str, branch: str) -> None:
        text = f"[remotes.origin]\nurl = {toml_string(url)}\nbranch = {toml_string(branch)}\n"
        atomic_write(self.muse / "config.toml", text.encode("utf-8"))

    def config(self) -> dict:
        try:
            return tomllib.loads((self.muse / "config.toml").read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise LayoutError(f"{self.muse / 'config.toml'} is not valid TOML: {exc}") from None

    def origin_url(self) -> str:
        url = self.config().get("remotes", {}).get("origin", {}).get("url")
        if not isinstance(url, str) or not url:
            raise LayoutError(f"no [remotes.origin] url in {self.muse / 'config.toml'}")
        return url

