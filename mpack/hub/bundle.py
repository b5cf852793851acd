"""The Muse CLI's own fetch: inline bundles, negotiation and the presign answer.

``POST /fetch`` returns commits, snapshots and blob bytes in one response. The
CLI refuses responses over 64 MiB, so a bundle whose blobs would pass
``inline_fetch_max_bytes`` is refused with a message naming ``/fetch/mpack``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mpack.format import ids
from mpack.hub import fsck, snapshots
from mpack.hub.build import EMPTY_BLOB, blobs_for
from mpack.hub.errors import BundleTooLarge, InvalidField, ObjectUnavailable
from mpack.hub.fetch import _walk_commit_delta, parse_haves, resolve_wants
from mpack.hub.history import iter_records, load_commits, topological
from mpack.hub.models import Object, Repo
from mpack.hub.push import missing_objects
from mpack.hub.repos import branch_heads
from storage.base import BLOBS
from storage.errors import StoredObjectMissing

if TYPE_CHECKING:
    from mpack.hub.services import Hub


def _want_have(body: dict) -> tuple[list[str], list[str]]:
    want, have = body.get("want", []), body.get("have", [])
    if not isinstance(want, list) or not all(isinstance(w, str) for w in want):
        raise InvalidField("want", "must be a list of commit ids")
    if not isinstance(have, list) or not all(isinstance(h, str) for h in have):
        raise InvalidField("have", "must be a list of commit ids")
    return want, have


def wire_fetch_bundle(hub: Hub, repo: Repo, body: dict) -> dict:
    """→ ``{commits, snapshots, objects, branch_heads}``: reachable from want, not from have."""
    want, have = _want_have(body)
    wants = resolve_wants(repo, want, skip_unknown=True)  # the CLI expects unknown wants skipped
    commits = _walk_commit_delta(repo, list(wants), parse_haves(have)) if wants else {}
    blobs = {d: spelled for d, spelled in blobs_for(repo, commits).items() if d != EMPTY_BLOB}
    _check_size(hub, repo, list(blobs))
    snapshot_digests = sorted({c.snapshot for c in commits.values()})
    records = snapshots.records(repo.repo_id, snapshot_digests)
    stored = [records[digest] for digest in snapshot_digests if digest in records]
    return {
        "commits": list(reversed(list(iter_records(repo, topological(commits))))),
        "snapshots": stored,
        "objects": [{"object_id": blobs[d], "content": _read(hub, d)} for d in sorted(blobs)],
        "branch_heads": branch_heads(repo),
    }


def _read(hub: Hub, digest: str) -> bytes:
    """A blob's bytes, verified: a damaged blob is quarantined, never served."""
    try:
        with hub.store.open(BLOBS, digest) as source:
            content = source.read()
    except StoredObjectMissing:
        raise ObjectUnavailable(digest) from None
    if ids.object_digest(content) != digest:
        fsck.quarantine_blob(hub, digest)
        raise ObjectUnavailable(digest, "damaged")
    return content


def _check_size(hub: Hub, repo: Repo, digests: list[str]) -> None:
    total = 0
    for start in range(0, len(digests), 500):
        chunk = digests[start:start + 500]
        total += sum(o.size for o in Object.select(Object.size).where((Object.repo == repo) & Object.digest.in_(chunk)))
    limit = hub.settings.inline_fetch_max_bytes
    if total > limit:
        raise BundleTooLarge(
            f"this fetch carries {total} bytes of objects, over the {limit}-byte inline limit the Muse CLI "
            f"accepts; fetch it as a pack: POST /{repo.owner}/{repo.name}/fetch/mpack (mpackhub clone)")


def negotiate(repo: Repo, body: dict) -> dict:
    """→ ``{ack, common_base, ready}``: which haves the hub knows, and the newest of them."""
    _, have = _want_have(body)
    known = load_commits(repo, (ids.hex_of(h) for h in have if ids.is_id(h)))
    ack = [h for h in have if ids.is_id(h) and ids.hex_of(h) in known]
    newest = max(known.values(), key=lambda c: (c.generation, c.digest), default=None)
    return {"ack": ack, "common_base": newest.commit_id if newest else None, "ready": newest is not None}


def presign_objects(hub: Hub, repo: Repo, body: dict) -> dict:
    """``POST /presign`` → ``{presigned: {id: url}, inline: [id]}``.

    A store that takes presigned uploads (S3) gets a PUT URL for every object
    this repo lacks; the push verifies each upload's hash before it may be
    referenced (``push.adopt_uploads``). Everything else — a local store,
    objects already held, ``direction: get`` — is answered inline.
    """
    object_ids = body.get("object_ids")
    if not isinstance(object_ids, list):
        raise InvalidField("object_ids", "must be a list")
    direction = body.get("direction", "put")
    if direction not in ("put", "get"):
        raise InvalidField("direction", "must be 'put' or 'get'")
    given = [ids.check_id(o, "object_id") for o in object_ids]
    if direction != "put" or not hub.store.accepts_presigned_uploads:
        return {"presigned": {}, "inline": given}
    lacking = set(missing_objects(repo, given))
    ttl = hub.settings.url_ttl
    presigned = {o: hub.store.presign_put(repo.repo_id, o, ttl) for o in given if o in lacking}
    return {"presigned": presigned, "inline": [o for o in given if o not in presigned]}
