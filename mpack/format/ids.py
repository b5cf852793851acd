"""Identifiers: validation and Muse's hashing rules, in one place.

Ids are SHA-256 digests spelled either as 64 lowercase hex characters (the
current Muse CLI) or as ``sha256:`` + 64 hex (newer Muse, the seed tests).
Both spellings are accepted; an id is never rewritten, so a repository keeps
the spelling its history was pushed with. Content is always checked against
the hex part.
"""
from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping

from mpack.format.errors import InvalidId

PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_id(value: object) -> bool:
    """True when ``value`` is a well-formed id in either spelling."""
    return isinstance(value, str) and len(value) in (64, 64 + len(PREFIX)) and _is_id_text(value)


@functools.lru_cache(maxsize=1 << 16)
def _is_id_text(value: str) -> bool:
    # Cached: manifests repeat the same ids across thousands of snapshots.
    if value.startswith(PREFIX):
        value = value[len(PREFIX):]
    return len(value) == 64 and _HEX64.fullmatch(value) is not None


def all_ids(values: Iterable[object]) -> bool:
    """True when every value is a well-formed id (a manifest's values: no Python frame per value)."""
    values = list(values)
    return set(map(type, values)) <= {str} and all(map(_is_id_text, values))


def check_id(value: object, what: str = "id") -> str:
    """Return ``value`` unchanged if it is a well-formed id, else raise InvalidId."""
    if not is_id(value):
        raise InvalidId(what, value)
    return value  # type: ignore[return-value]


def hex_of(value: str) -> str:
    """The 64-hex digest of a well-formed id (either spelling)."""
    return check_id(value)[-64:]


def spellings(value: str) -> tuple[str, str]:
    """Both spellings of an id, for lookups that must match either."""
    digest = hex_of(value)
    return digest, PREFIX + digest


def same_digest(claimed: str, digest_hex: str) -> bool:
    """True when ``claimed`` names the digest ``digest_hex``."""
    return is_id(claimed) and claimed[-64:] == digest_hex


def object_digest(content: bytes) -> str:
    """Hex SHA-256 of blob bytes (the object id's digest)."""
    return hashlib.sha256(content).hexdigest()


def snapshot_digest(manifest: Mapping[str, str]) -> str:
    """Hex digest of a snapshot: sorted ``path NUL object_id`` entries joined by NUL."""
    entries = sorted(f"{path}\0{object_id}" for path, object_id in manifest.items())
    return hashlib.sha256("\0".join(entries).encode("utf-8")).hexdigest()


def commit_digest(parent_ids: Iterable[str], snapshot_id: str, message: str, committed_at: str) -> str:
    """Hex digest of a commit by Muse's rule (parents sorted, fields NUL-joined)."""
    parts = ["\0".join(sorted(parent_ids)), snapshot_id, message, committed_at]
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()
