"""The record rules: what a commit, a snapshot and a branch name must be.

One set of rules for every side: a push refuses what these refuse (422,
naming the field), the pack reader refuses the same inside a pack, and the
client checks branch names with them before a name becomes a path. A record
that passes here can always be packed, read back and checked out.

Rules (PROTOCOL.md, "Records" and "Identifiers"):

* Commit: ``commit_id`` and ``snapshot_id`` well-formed ids; ``message`` and
  ``committed_at`` strings; ``parent_commit_id``/``parent2_commit_id`` an id or
  nil. Other fields are the client's, stored and returned verbatim.
* Snapshot: ``snapshot_id`` a well-formed id; ``manifest`` a map of safe
  relative paths to object ids; ``created_at`` a string when present.
* A manifest path is a relative ``/``-separated path: not empty, not absolute,
  no empty, ``.`` or ``..`` segment, nothing under ``.muse`` (any case), no
  NUL, backslash, control, bidi-override or surrogate characters, at most
  4096 bytes with segments of at most 255.
* A branch name: at most 255 bytes; no NUL, backslash, space, control,
  bidi-override or surrogate characters; no ``..``; not starting with ``/``
  or ``-``; no empty or ``.`` segment; not ending with ``/`` or ``.lock``; not
  ``HEAD`` and not under ``refs/`` (a ref, not a branch).
"""
from __future__ import annotations

import functools
import unicodedata
from collections.abc import Mapping

from mpack.format import ids
from mpack.format.errors import InvalidRecord

MAX_PATH_BYTES = 4096
MAX_SEGMENT_BYTES = 255
MAX_BRANCH_BYTES = 255
# Characters that reorder or hide text (Trojan Source, CVE-2021-42574).
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_PARENTS = ("parent_commit_id", "parent2_commit_id")


def _bad_char(text: str) -> str | None:
    """The first character no name or path may hold, or None."""
    for ch in text:
        if ch in "\0\\" or ch in BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cs"):
            return ch
    return None


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


# -- branch names -----------------------------------------------------------------

def branch_problem(name: object) -> str | None:
    """Why ``name`` is not a branch name, or None when it is one."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if _utf8_len(name) > MAX_BRANCH_BYTES:
        return f"longer than {MAX_BRANCH_BYTES} bytes"
    bad = _bad_char(name)
    if bad is not None or " " in name:
        return f"holds the character {bad or ' '!r}"
    if name == "HEAD" or name.startswith("refs/"):
        return "names a ref (HEAD or refs/...), not a branch"
    if name[0] in "/-" or ".." in name or name.endswith(("/", ".lock")):
        return "starts with / or -, holds '..', or ends with / or .lock"
    if any(part in ("", ".") for part in name.split("/")):
        return "has an empty or '.' segment"
    return None


def check_branch_name(name: object, field: str = "branch") -> str:
    """Return ``name`` if it is a branch name, else raise InvalidRecord naming ``field``."""
    problem = branch_problem(name)
    if problem is not None:
        raise InvalidRecord(field, f"{problem} (got {repr(name)[:80]})")
    return name  # type: ignore[return-value]


# -- manifest paths ---------------------------------------------------------------

def path_problem(path: object) -> str | None:
    """Why ``path`` is not a safe manifest path, or None when it is one."""
    if not isinstance(path, str) or not path:
        return "must be a non-empty string"
    return _str_path_problem(path)


@functools.lru_cache(maxsize=1 << 16)
def _str_path_problem(path: str) -> str | None:
    """``path_problem`` of a non-empty string, remembered: consecutive snapshots repeat almost every path
    (a push or a pack of N snapshots of M files would check N × M paths, not the ~M distinct ones)."""
    if _utf8_len(path) > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    bad = _bad_char(path)
    if bad is not None:
        return f"holds the character {bad!r}"
    if path.startswith("/"):
        return "is absolute"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "has an empty, '.' or '..' segment"
    if parts[0].lower() == ".muse":
        return "is inside .muse/"
    if any(_utf8_len(part) > MAX_SEGMENT_BYTES for part in parts):
        return f"has a segment longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def check_manifest(manifest: object, field: str = "snapshot.manifest",
                   checked: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """Return ``manifest`` if it maps safe paths to object ids, else raise InvalidRecord.

    ``checked``: a manifest that passed already (the snapshot before in a push);
    only the entries not in it are checked, since consecutive snapshots share most.
    """
    if not isinstance(manifest, dict):
        raise InvalidRecord(field, "must be a map of paths to object ids")
    entries = manifest
    if checked and set(map(type, manifest)) <= {str} and set(map(type, manifest.values())) <= {str}:
        entries = dict(manifest.items() - checked.items())  # strings only: every entry hashable
    # The usual case, checked through the remembered checks without a Python frame per entry
    # (a push of N snapshots of M files checks N × M entries); the loop below names the first problem.
    if set(map(type, entries)) <= {str} and not any(map(_str_path_problem, entries)) and ids.all_ids(entries.values()):
        return manifest
    for path, object_id in entries.items():
        problem = path_problem(path)
        if problem is not None:
            raise InvalidRecord(f"{field}[{repr(path)[:80]}]", f"path {problem}")
        if not ids.is_id(object_id):
            raise InvalidRecord(f"{field}[{path!r}]", f"object id {repr(object_id)[:80]} is not a well-formed id")
    return manifest


# -- records ----------------------------------------------------------------------

def _need_id(record: dict, key: str, field: str) -> str:
    value = record.get(key)
    if not ids.is_id(value):
        raise InvalidRecord(f"{field}.{key}", f"must be a well-formed id (got {repr(value)[:80]})")
    return value


def _need_str(record: dict, key: str, field: str) -> None:
    value = record.get(key)
    if not isinstance(value, str):
        raise InvalidRecord(f"{field}.{key}", f"must be a string, not {type(value).__name__}")


def check_snapshot_record(record: object, field: str = "snapshot", checked: Mapping[str, str] | None = None) -> dict:
    """Return ``record`` if it is a valid SnapshotDict (ids not re-hashed), else raise InvalidRecord.

    ``checked``: a manifest known valid, whose entries are not checked again (``check_manifest``).
    """
    if not isinstance(record, dict):
        raise InvalidRecord(field, "must be a map")
    _need_id(record, "snapshot_id", field)
    check_manifest(record.get("manifest"), f"{field}.manifest", checked)
    if "created_at" in record:
        _need_str(record, "created_at", field)
    return record


def commit_parents(record: dict, field: str = "commit") -> list[str]:
    """The parent ids a commit record names (absent and nil both mean none)."""
    parents = []
    for key in _PARENTS:
        value = record.get(key)
        if value is not None:
            parents.append(_need_id(record, key, field))
    return parents


def check_commit_record(record: object, field: str = "commit") -> dict:
    """Return ``record`` if it is a valid CommitDict (ids not re-hashed), else raise InvalidRecord."""
    if not isinstance(record, dict):
        raise InvalidRecord(field, "must be a map")
    _need_id(record, "commit_id", field)
    _need_id(record, "snapshot_id", field)
    _need_str(record, "message", field)
    _need_str(record, "committed_at", field)
    commit_parents(record, field)
    return record
