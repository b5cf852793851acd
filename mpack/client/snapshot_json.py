"""The JSON file of each snapshot of a pack, written from its delta.

A Muse clone holds every snapshot as a whole manifest in JSON, so applying a
pack writes commits × files entries whatever its format. ``SnapshotJson``
keeps the previous snapshot's entries already encoded, sorted by path: a
snapshot record then costs one encoding per changed entry and one join,
instead of encoding every entry of every manifest again. The bytes are
exactly ``layout.record_json("snapshots", snapshot)``'s.
"""
from __future__ import annotations

import json
from bisect import bisect_left

from mpack.format.layout import SnapshotRecord


def _entry(path: str, object_id: str) -> str:
    return f"{json.dumps(path, ensure_ascii=False)}: {json.dumps(object_id, ensure_ascii=False)}"


class SnapshotJson:
    """Renders the snapshot records of one pack, in pack order."""

    def __init__(self) -> None:
        self._previous: str | None = None
        self._paths: list[str] = []
        self._entries: list[str] = []

    def render(self, record: SnapshotRecord) -> bytes:
        data = record.data
        if self._previous is None or record.base is None or record.base[-64:] != self._previous[-64:]:
            manifest = data["manifest"]
            self._paths = sorted(manifest)
            self._entries = [_entry(path, manifest[path]) for path in self._paths]
        else:
            self._apply(record)
        self._previous = data["snapshot_id"]
        parts = [(key, json.dumps(value, ensure_ascii=False, sort_keys=True))
                 for key, value in data.items() if key != "manifest"]
        parts.append(("manifest", "{" + ", ".join(self._entries) + "}"))
        parts.sort()
        text = ", ".join(f"{json.dumps(key, ensure_ascii=False)}: {value}" for key, value in parts)
        return ("{" + text + "}\n").encode("utf-8")

    def _apply(self, record: SnapshotRecord) -> None:
        paths, entries = self._paths, self._entries
        for path in record.removed:
            at = bisect_left(paths, path)
            del paths[at], entries[at]
        for path, object_id in record.changed.items():
            at = bisect_left(paths, path)
            if at < len(paths) and paths[at] == path:
                entries[at] = _entry(path, object_id)
            else:
                paths.insert(at, path)
                entries.insert(at, _entry(path, object_id))
