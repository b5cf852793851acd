"""Verified, all-or-nothing pushes (the write half of the Muse wire protocol).

Order of work, so that a rejected or failed push changes nothing visible:
1. parse and type-check every record; re-hash every object, snapshot and commit;
2. check that every referenced object, snapshot and parent is in this push or
   already in the repository;
3. store blob bytes (content-addressed, so a later failure leaves at most
   unreferenced files for GC);
4. one IMMEDIATE transaction: insert rows, check fast-forward against the
   branch head as it is now, move the branch, enqueue the prebuild.
"""
from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import peewee as pw

from mpack.format import ids, rules
from mpack.hub import bulk, deltas, prebuild
from mpack.hub.db import for_update
from mpack.hub.errors import BadRequest, InvalidField, MissingReference, MuseError, NonFastForward
from mpack.hub.history import is_ancestor, load_commits
from mpack.hub.jsonlike import JsonText, json_text
from mpack.hub.models import Branch, Commit, Object, Repo, Snapshot
from mpack.hub.repos import branch_heads
from mpack.hub.snapshots import NOT_KEPT
from storage.base import BLOBS
from storage.errors import ContentMismatch

if TYPE_CHECKING:
    from mpack.hub.services import Hub

MAX_OBJECTS_PER_CHUNK = 1000
EMPTY_BLOB = ids.object_digest(b"")


@dataclass
class Blob:
    object_id: str
    digest: str
    content: bytes


@dataclass
class ParsedCommit:
    record: dict
    digest: str
    parents: list[str]  # digests
    snapshot: str  # digest
    text: JsonText  # the record as stored


@dataclass
class Bundle:
    blobs: list[Blob] = field(default_factory=list)
    snapshots: dict[str, dict] = field(default_factory=dict)  # digest -> record
    commits: list[ParsedCommit] = field(default_factory=list)


# -- parsing and verification (no database) ---------------------------------------

def _list(value: object, name: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidField(name, "must be a list")
    return value


def _map(value: object, name: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidField(name, "must be a map")
    return value


def content_bytes(value: object, name: str) -> bytes:
    """Object content: msgpack bin, or a base64 string when the body was JSON."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidField(name, "not valid base64") from None
    raise InvalidField(name, "must be bytes (msgpack bin) or a base64 string")


def parse_objects(items: object, name: str = "objects") -> list[Blob]:
    """ObjectPayloads → blobs with well-formed ids.

    The content is hashed once, by the store (``put_many`` checks every blob
    of a request against its id before it writes any).
    """
    blobs = []
    for index, item in enumerate(_list(items, name)):
        item = _map(item, f"{name}[{index}]")
        object_id = ids.check_id(item.get("object_id"), "object_id")
        content = content_bytes(item.get("content"), f"{name}[{index}].content")
        blobs.append(Blob(object_id, ids.hex_of(object_id), content))
    return blobs


def parse_snapshot(record: object, name: str, checked: dict | None = None) -> tuple[str, dict]:
    """A verified snapshot record → (digest, record); entries of ``checked`` (a manifest that passed) are not checked again.

    The manifest's rules make it storable as JSON; the other fields are checked
    here (most records are stored as their delta: ``mpack.hub.snapshots``).
    """
    record = rules.check_snapshot_record(_map(record, name), name, checked)
    json_text(deltas.fields_of(record), name)
    snapshot_id = record["snapshot_id"]
    digest = ids.snapshot_digest(record["manifest"])
    if not ids.same_digest(snapshot_id, digest):
        raise ContentMismatch("snapshot", snapshot_id, digest)
    return digest, record


def parse_commit(record: object, name: str) -> ParsedCommit:
    record = rules.check_commit_record(_map(record, name), name)
    text = json_text(record, name)
    commit_id, snapshot_id = record["commit_id"], record["snapshot_id"]
    parents = rules.commit_parents(record, name)
    digest = ids.commit_digest(parents, snapshot_id, record["message"], record["committed_at"])
    if not ids.same_digest(commit_id, digest):
        raise ContentMismatch("commit", commit_id, digest)
    return ParsedCommit(record, digest, [ids.hex_of(p) for p in parents], ids.hex_of(snapshot_id), text)


def parse_bundle(bundle: object) -> Bundle:
    bundle = _map(bundle, "bundle")
    parsed = Bundle(blobs=parse_objects(bundle.get("objects"), "bundle.objects"))
    checked = None
    for index, record in enumerate(_list(bundle.get("snapshots"), "bundle.snapshots")):
        digest, record = parse_snapshot(record, f"bundle.snapshots[{index}]", checked)
        parsed.snapshots[digest] = record
        checked = record["manifest"]  # the next one (its parent or child, as the CLI orders them) shares most entries
    commits = _list(bundle.get("commits"), "bundle.commits")
    parsed.commits = [parse_commit(record, f"bundle.commits[{i}]") for i, record in enumerate(commits)]
    return parsed


# -- references -------------------------------------------------------------------

def _present(model, repo: Repo, digests: Iterable[str]) -> set[str]:
    return bulk.present(model, repo.repo_id, digests)


def missing_objects(repo: Repo, object_ids: Iterable[str]) -> list[str]:
    """The ids (as given) whose content this repo does not hold; the empty blob is always held."""
    given = [ids.check_id(o, "object_id") for o in object_ids]
    held = _present(Object, repo, (ids.hex_of(o) for o in given)) | {EMPTY_BLOB}
    return [o for o in given if ids.hex_of(o) not in held]


def adopt_uploads(hub: Hub, repo: Repo, digests: set[str]) -> set[str]:
    """Blobs uploaded through presigned URLs, verified by hash and recorded → the digests adopted."""
    if not digests or not hub.store.accepts_presigned_uploads:
        return set()
    sizes = {d: hub.store.adopt_upload(repo.repo_id, d) for d in sorted(digests)}
    adopted = {d: size for d, size in sizes.items() if size is not None}
    if adopted:
        with hub.db.atomic():
            bulk.insert_ignoring_duplicates(Object, ("repo", "digest", "size"),
                                            [(repo.repo_id, d, size) for d, size in adopted.items()])
    return set(adopted)


def check_references(hub: Hub, repo: Repo, bundle: Bundle) -> None:
    pushed_blobs = {b.digest for b in bundle.blobs}
    # Each distinct id once: consecutive snapshots name almost the same objects.
    wanted_blobs = set(map(ids.hex_of, {o for s in bundle.snapshots.values() for o in s["manifest"].values()}))
    lacking = wanted_blobs - pushed_blobs - {EMPTY_BLOB}
    lacking -= _present(Object, repo, lacking)
    lacking -= adopt_uploads(hub, repo, lacking)
    if lacking:
        raise MissingReference("objects", sorted(lacking))
    lacking = {c.snapshot for c in bundle.commits} - set(bundle.snapshots)
    lacking -= _present(Snapshot, repo, lacking)
    if lacking:
        raise MissingReference("snapshots", sorted(lacking))
    pushed_commits = {c.digest for c in bundle.commits}
    lacking = {p for c in bundle.commits for p in c.parents} - pushed_commits
    lacking -= set(load_commits(repo, lacking))
    if lacking:
        raise MissingReference("parent commits", sorted(lacking))


def _generations(repo: Repo, commits: list[ParsedCommit]) -> dict[str, int]:
    """Generation of each pushed commit (parents first, whatever the bundle's order)."""
    by_digest = {c.digest: c for c in commits}
    known = {d: row.generation for d, row in load_commits(
        repo, {p for c in commits for p in c.parents if p not in by_digest}).items()}
    for commit in commits:
        stack = [commit]
        while stack:
            top = stack[-1]
            if top.digest in known:
                stack.pop()
                continue
            pending = [by_digest[p] for p in top.parents if p not in known]
            if pending:
                stack.extend(pending)
            else:
                known[top.digest] = 1 + max((known[p] for p in top.parents), default=0)
                stack.pop()
    return {c.digest: known[c.digest] for c in commits}


# -- applying ---------------------------------------------------------------------

def _store_bytes(hub: Hub, blobs: Iterable[Blob]) -> None:
    """Verify every blob against its id (ContentMismatch before anything is written), then store them durably."""
    created = hub.store.put_many(BLOBS, [(blob.digest, blob.content) for blob in blobs])
    written = [blob for blob, new in zip(blobs, created, strict=True) if new]
    hub.metrics.objects_stored(len(written), sum(len(blob.content) for blob in written))


def receive_objects(hub: Hub, repo: Repo, body: dict) -> dict:
    """``POST /push/objects``: store verified blobs, record the repo's right to them."""
    items = _list(body.get("objects"), "objects")
    if len(items) > MAX_OBJECTS_PER_CHUNK:  # refused before any hashing
        raise BadRequest(f"at most {MAX_OBJECTS_PER_CHUNK} objects per request")
    blobs = parse_objects(items)
    _store_bytes(hub, blobs)  # all of them: a blob the repo already has is still checked against its id
    already = _present(Object, repo, (b.digest for b in blobs))
    fresh = {b.digest: b for b in blobs if b.digest not in already}
    if fresh:
        with hub.db.atomic():
            _insert_objects(repo, fresh.values())
    return {"stored": len(fresh), "skipped": len(blobs) - len(fresh)}


def _insert_objects(repo: Repo, blobs: Iterable[Blob]) -> None:
    """The blobs' rows: size, and the CRC-32 that builds check the stored file against (``blob_feed``)."""
    bulk.insert_ignoring_duplicates(Object, ("repo", "digest", "size", "crc32"), [
        (repo.repo_id, blob.digest, len(blob.content), zlib.crc32(blob.content)) for blob in blobs])


def _tip_of(body: dict, bundle: Bundle) -> ParsedCommit | str:
    if bundle.commits:
        # The CLI sends commits breadth-first from its head, so commits[0] is the tip; a
        # reordered bundle still names its tip unambiguously if only one commit has no child.
        children_of = {p for c in bundle.commits for p in c.parents}
        heads = [c for c in bundle.commits if c.digest not in children_of]
        if bundle.commits[0] in heads:
            return bundle.commits[0]
        if len(heads) == 1:
            return heads[0]
        raise BadRequest("the bundle has several unrelated tips: push one branch head, tip first")
    head = body.get("head")
    if head is None:
        raise BadRequest("the bundle has no commits: nothing to push")
    return ids.check_id(head, "head")


def push(hub: Hub, repo: Repo, body: dict) -> dict:
    """Apply ``POST /push`` → ``{ok, message, branch_heads}`` (counted as ok or rejected)."""
    try:
        answer = _apply_push(hub, repo, body)
    except MuseError:
        hub.metrics.pushed("rejected")
        raise
    hub.metrics.pushed("ok")
    return answer


def _apply_push(hub: Hub, repo: Repo, body: dict) -> dict:
    branch = rules.check_branch_name(body.get("branch"))
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise InvalidField("force", "must be a boolean")
    bundle = parse_bundle(body.get("bundle"))
    tip = _tip_of(body, bundle)
    check_references(hub, repo, bundle)
    generations = _generations(repo, bundle.commits)
    snapshot_deltas = deltas.for_push(repo, bundle.snapshots, [
        (c.digest, c.parents, c.snapshot, generations[c.digest]) for c in bundle.commits])
    _store_bytes(hub, bundle.blobs)
    with hub.db.atomic():
        _insert_history(repo, bundle, generations, snapshot_deltas)
        tip_id, tip_digest = _resolve_tip(repo, tip)
        previous = _move_branch(hub, repo, bundle, branch, tip_id, tip_digest, force)
        if repo.default_branch is None:
            Repo.update(default_branch=branch).where(Repo.repo_id == repo.repo_id).execute()
        if previous != tip_id:
            prebuild.enqueue_push_intel(hub, repo, head=tip_id, domain_id=repo.domain, branch=branch, previous_tip=previous)
    hub.log.info("push applied", extra={"repo": f"{repo.owner}/{repo.name}", "branch": branch,
                                        "commits": len(bundle.commits), "forced": force})
    return {"ok": True, "message": f"{branch} -> {tip_id}", "branch_heads": branch_heads(repo)}


def _insert_history(repo: Repo, bundle: Bundle, generations: dict[str, int], new: list[deltas.Delta]) -> None:
    _insert_objects(repo, bundle.blobs)
    bulk.insert_ignoring_duplicates(Snapshot, ("repo", "digest", "record"), [
        (repo.repo_id, d.digest, json_text(bundle.snapshots[d.digest], "snapshot") if d.depth == 0 else NOT_KEPT)
        for d in new])
    deltas.insert(repo, new)
    bulk.insert_ignoring_duplicates(
        Commit, ("repo", "digest", "commit_id", "parents", "snapshot", "generation", "record"),
        [(repo.repo_id, c.digest, c.record["commit_id"], c.parents, c.snapshot, generations[c.digest], c.text)
         for c in bundle.commits])


def _resolve_tip(repo: Repo, tip: ParsedCommit | str) -> tuple[str, str]:
    if isinstance(tip, ParsedCommit):
        return tip.record["commit_id"], tip.digest
    row = load_commits(repo, [ids.hex_of(tip)]).get(ids.hex_of(tip))
    if row is None:
        raise MissingReference("head commit", [tip])
    return row.commit_id, row.digest


def _bundle_reaches(bundle: Bundle, tip: str, target: str) -> bool:
    """Whether ``target`` is ``tip`` or a parent reached through this push's commits (no queries)."""
    by_digest = {c.digest: c for c in bundle.commits}
    stack, seen = [tip], set()
    while stack:
        digest = stack.pop()
        if digest == target:
            return True
        if digest in seen or digest not in by_digest:
            continue
        seen.add(digest)
        stack.extend(by_digest[digest].parents)
    return False


def _is_fast_forward(repo: Repo, bundle: Bundle, previous: str, tip: str) -> bool:
    """The usual push names the old head as a parent of its oldest commit: answer that in memory."""
    target = ids.hex_of(previous)
    return _bundle_reaches(bundle, tip, target) or is_ancestor(repo, target, tip)


def _move_branch(hub: Hub, repo: Repo, bundle: Bundle, name: str, tip_id: str, tip_digest: str,
                 force: bool) -> str | None:
    """Point branch ``name`` at the tip (inside the caller's transaction) → the previous head.

    The branch row is read ``FOR UPDATE`` (PostgreSQL; SQLite's writer lock does the same), so a
    concurrent push to the same branch from any node waits, then checks fast-forward against the
    head that push left, instead of both moving the branch from the same old head.
    """
    current = _locked_branch(hub, repo, name)
    if current is None:
        try:
            with hub.db.atomic():  # a savepoint: a concurrent first push of this branch may win the insert
                Branch.create(repo=repo, name=name, head_commit_id=tip_id, updated_at=hub.now())
            return None
        except pw.IntegrityError:
            current = _locked_branch(hub, repo, name)
    previous = current.head_commit_id
    if previous == tip_id:
        return previous
    if not force and not _is_fast_forward(repo, bundle, previous, tip_digest):
        raise NonFastForward(name, previous, tip_id)
    Branch.update(head_commit_id=tip_id, updated_at=hub.now()).where(Branch.id == current.id).execute()
    return previous


def _locked_branch(hub: Hub, repo: Repo, name: str) -> Branch | None:
    return for_update(hub.db, Branch.select().where((Branch.repo == repo) & (Branch.name == name))).first()
