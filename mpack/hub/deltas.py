"""Snapshot deltas: each snapshot kept also as its difference from a parent commit's snapshot.

Muse snapshots are whole manifests, so anything that reads every snapshot of
a history costs commits × files. The hub computes each new snapshot's delta
once, when it is pushed (``rows_for_push``), against the snapshot of the first
parent of the first commit that names it; builds then read deltas only
(``mpack.hub.build``). ``backfill`` computes the rows of history pushed
before deltas existed (a schema migration runs it).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import peewee as pw

from mpack.hub import bulk, snapshots
from mpack.hub.models import Commit, Snapshot, SnapshotDelta


class Delta(NamedTuple):
    """One snapshot record to write: ``changed``/``removed`` against ``base`` ("" = in full)."""

    digest: str
    snapshot_id: str
    base: str
    base_id: str
    fields: dict
    changed: dict
    removed: dict
    depth: int = 0  # links from the nearest snapshot kept in full (``mpack.hub.snapshots``)


def diff(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[dict, dict]:
    """(entries added or changed, entries removed with their old id) from ``old`` to ``new``."""
    # Set operations on the item views run in C: most of two consecutive manifests is equal.
    changed = dict(new.items() - old.items())
    removed = {path: old[path] for path in old.keys() - new.keys()}
    return changed, removed


def fields_of(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in ("snapshot_id", "manifest")}


def delta_of(digest: str, record: dict, base: str = "", base_record: dict | None = None) -> Delta:
    """The delta of snapshot ``record`` against ``base_record`` (None: in full)."""
    old = base_record["manifest"] if base_record is not None else {}
    changed, removed = diff(old, record["manifest"])
    base_id = base_record["snapshot_id"] if base_record is not None else ""
    return Delta(digest, record["snapshot_id"], base if base_record is not None else "", base_id,
                 fields_of(record), changed, removed)


def load(repo, digests: Iterable[str]) -> dict[str, Delta]:
    """The stored deltas of these snapshots (absent ones are missing from the result)."""
    repo_id = getattr(repo, "repo_id", repo)
    return {digest: Delta(digest, snapshot_id, base, base_id, json.loads(fields), json.loads(changed),
                          json.loads(removed), depth)
            for digest, snapshot_id, base, base_id, fields, changed, removed, depth
            in bulk.rows_by_digest(SnapshotDelta, repo_id, digests, Delta._fields)}


def snapshot_record(repo, digest: str) -> dict:
    """One stored snapshot's full record (rebuilt from its deltas where it is not kept in full)."""
    return snapshots.record(getattr(repo, "repo_id", repo), digest)


def insert(repo, deltas: Iterable[Delta]) -> None:
    repo_id = getattr(repo, "repo_id", repo)
    bulk.insert_ignoring_duplicates(SnapshotDelta, ("repo", *Delta._fields), [(repo_id, *d) for d in deltas])


def backfill(db: pw.Database) -> int:
    """Compute the delta of every snapshot that has none, oldest commits first → rows written.

    Holds two decoded manifests at a time (a commit's and its first parent's).
    """
    written = 0
    done = {(r.repo_id, r.digest) for r in SnapshotDelta.select(SnapshotDelta.repo, SnapshotDelta.digest)}
    query = (Commit.select(Commit.repo, Commit.parents, Commit.snapshot)
             .order_by(Commit.repo, Commit.generation, Commit.digest))
    cached: dict[tuple[str, str], dict] = {}
    for commit in query.iterator():
        key = (commit.repo_id, commit.snapshot)
        if key in done:
            continue
        parent = Commit.get_or_none((Commit.repo == commit.repo_id) & (Commit.digest == commit.parents[0])) \
            if commit.parents else None
        base = parent.snapshot if parent is not None else ""
        base_record = _cached_record(cached, commit.repo_id, base) if base else None
        record = _cached_record(cached, commit.repo_id, commit.snapshot)
        insert(commit.repo_id, [delta_of(commit.snapshot, record, base, base_record)])
        done.add(key)
        written += 1
    return written


def _cached_record(cached: dict, repo_id: str, digest: str) -> dict:
    key = (repo_id, digest)
    if key not in cached:
        if len(cached) > 4:
            cached.clear()
        cached[key] = snapshot_record(repo_id, digest)
    return cached[key]


def for_push(repo, records: dict[str, dict], commits: Iterable[tuple[str, list[str], str, int]]) -> list[Delta]:
    """Deltas of the pushed snapshots this repo lacks, each with its chain depth (0: keep it in full).

    Args:
        records: digest -> snapshot record, as pushed (verified).
        commits: (digest, parent digests, snapshot digest, generation) of the pushed commits.
    """
    present = bulk.present(Snapshot, repo.repo_id, records)
    pushed = {digest: (parents, snapshot) for digest, parents, snapshot, _ in commits}
    first: dict[str, str | None] = {}  # new snapshot -> first parent of the earliest commit naming it
    for _digest, parents, snapshot, _ in sorted(commits, key=lambda c: (c[3], c[0])):
        if snapshot in records and snapshot not in present and snapshot not in first:
            first[snapshot] = parents[0] if parents else None
    outside = {p for p in first.values() if p is not None and p not in pushed}
    outside_snapshots = dict(Commit.select(Commit.digest, Commit.snapshot).where(
        (Commit.repo == repo) & Commit.digest.in_(sorted(outside))).tuples()) if outside else {}
    stored: dict[str, dict] = {}
    deltas = []
    for digest in sorted(set(records) - present):
        parent = first.get(digest)
        base = "" if parent is None else (pushed[parent][1] if parent in pushed else outside_snapshots[parent])
        base_record = None
        if base:
            base_record = records.get(base) or stored.get(base)
            if base_record is None:
                base_record = stored[base] = snapshot_record(repo, base)
        deltas.append(delta_of(digest, records[digest], base, base_record))
    new_bases = {d.base for d in deltas} - {d.digest for d in deltas} - {""}
    depths = snapshots.depths(snapshots.stored_depths(repo.repo_id, new_bases), [(d.digest, d.base) for d in deltas])
    return [d._replace(depth=depths[d.digest]) for d in deltas]
