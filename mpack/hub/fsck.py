"""fsck: find damaged or missing stored objects, move them aside, and say what must be pushed again.

``run_fsck`` re-hashes every stored blob and pack against its name (a pack is
also read through the verifying reader, so a pack built from a damaged blob is
caught), then:

- moves each damaged file into quarantine (``Store.quarantine``), never deletes it;
- drops the cache rows that name a damaged or missing pack, so the next fetch
  builds it again instead of handing out a URL to nothing;
- forgets every repository's right to a damaged or missing blob (its ``object``
  rows), so ``filter-objects`` lists it as missing and the owner's next push
  uploads it again — and is stored, not ``skipped``;
- reports, per repository, the object ids that need that re-upload.

``quarantine_blob`` does the same for one blob found damaged while serving it.
A dry run changes nothing and reports what a real run would do.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from mpack.format import ids
from mpack.format.errors import MPackError, UnsupportedVersion
from mpack.format.reader import verify_mpack
from mpack.hub import snapshots
from mpack.hub.errors import InvalidField
from mpack.hub.models import FetchMPackCache, Object, Repo, Snapshot
from storage.base import BLOBS, MPACKS, VERIFY_CHUNK
from storage.errors import StoredObjectMissing

if TYPE_CHECKING:
    from mpack.hub.services import Hub

BATCH = 500
REPORT_LIMIT = 1000  # ids listed per report field; the counts are always complete


@dataclass
class FsckReport:
    blobs_checked: int = 0
    packs_checked: int = 0
    blobs_quarantined: list[str] = field(default_factory=list)
    packs_quarantined: list[str] = field(default_factory=list)
    blobs_missing: list[str] = field(default_factory=list)  # named by a repo, absent from the store
    cache_rows_dropped: int = 0
    reupload: dict[str, list[str]] = field(default_factory=dict)  # "owner/name" → object ids to push again
    dry_run: bool = False
    duration_ms: int = 0

    @property
    def clean(self) -> bool:
        return not (self.blobs_quarantined or self.packs_quarantined or self.blobs_missing or self.cache_rows_dropped)

    def as_dict(self) -> dict:
        report = asdict(self)
        for key in ("blobs_quarantined", "packs_quarantined", "blobs_missing"):
            report[key] = report[key][:REPORT_LIMIT]
        # Sorted: the order rows come back in is the database's (SQLite's is the key's, PostgreSQL's is any).
        report["reupload"] = {repo: sorted(names)[:REPORT_LIMIT] for repo, names in sorted(self.reupload.items())}
        report["clean"] = self.clean
        return report


def parse_request(body: dict) -> bool:
    """``{"dry_run": bool?}`` → dry_run."""
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidField("dry_run", "must be a boolean")
    return dry_run


class _HashingFile:
    """Hashes what is read through it, so one pass both hashes and parses a pack."""

    def __init__(self, raw) -> None:
        self._raw, self.sha = raw, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.sha.update(data)
        return data

    def finish(self) -> str:
        while self.read(VERIFY_CHUNK):
            pass
        return self.sha.hexdigest()


def _snapshot_manifest(snapshot_id: str) -> dict | None:
    """A snapshot the hub holds (in any repo: ids are content), for an incremental pack's delta base."""
    digest = ids.hex_of(snapshot_id)
    row = Snapshot.select(Snapshot.repo).where(Snapshot.digest == digest).first()
    record = snapshots.records(row.repo_id, [digest]).get(digest) if row is not None else None
    return record["manifest"] if record is not None else None  # a chain missing its base holds nothing either


def pack_intact(hub: Hub, digest: str) -> bool:
    """The pack hashes to its name and reads back as a valid pack (every blob id checked).

    A pack of an older format version is not damaged, only outdated (hits never
    serve it; GC removes it): it is checked against its name only.
    """
    with hub.store.open(MPACKS, digest) as raw:
        source = _HashingFile(raw)
        try:
            verify_mpack(source, snapshot_base=_snapshot_manifest)
        except UnsupportedVersion as exc:
            if exc.version >= exc.supported:
                return False
        except MPackError:
            return False
        return source.finish() == digest


def _drop_rows_naming(hub: Hub, digest: str, report: FsckReport) -> None:
    names = FetchMPackCache.mpack_id.in_(ids.spellings(digest))
    if report.dry_run:
        report.cache_rows_dropped += FetchMPackCache.select().where(names).count()
        return
    with hub.db.atomic():
        report.cache_rows_dropped += FetchMPackCache.delete().where(names).execute()


def forget_blobs(hub: Hub, digests: list[str], report: FsckReport) -> None:
    """Drop every repo's right to these blobs and list them for re-upload, per repo."""
    for start in range(0, len(digests), BATCH):
        chunk = digests[start:start + BATCH]
        held = (Object.select(Object.digest, Repo.owner, Repo.name).join(Repo, on=(Object.repo == Repo.repo_id))
                .where(Object.digest.in_(chunk)).tuples())
        for digest, owner, name in held:
            report.reupload.setdefault(f"{owner}/{name}", []).append(digest)
        if not report.dry_run:
            with hub.db.atomic():
                Object.delete().where(Object.digest.in_(chunk)).execute()


def quarantine_blob(hub: Hub, digest: str) -> bool:
    """Move one damaged blob aside and forget it everywhere → whether it was damaged.

    Used when serving finds a blob whose bytes no longer match its id.
    """
    if hub.store.quarantine(BLOBS, digest) is None:
        return False
    report = FsckReport()
    forget_blobs(hub, [digest], report)
    hub.log.error("damaged blob quarantined", extra={"object_id": digest, "reupload": report.reupload})
    return True


def _intact(hub: Hub, namespace: str, digest: str) -> bool:
    try:
        return hub.store.verify(BLOBS, digest) if namespace == BLOBS else pack_intact(hub, digest)
    except StoredObjectMissing:
        return True  # removed (a pack, by GC) since the listing: nothing to repair


def _check_namespace(hub: Hub, namespace: str, report: FsckReport) -> list[str]:
    """Verify every object of a namespace, quarantining damaged ones → their digests."""
    damaged = []
    for digest in list(hub.store.iter_digests(namespace)):
        if namespace == BLOBS:
            report.blobs_checked += 1
        else:
            report.packs_checked += 1
        if _intact(hub, namespace, digest):
            continue
        # A pack can hash right and still be wrong inside: move it whatever its hash.
        if report.dry_run or hub.store.quarantine(namespace, digest, keep_intact=namespace == BLOBS) is not None:
            damaged.append(digest)
    return damaged


def _missing_blobs(hub: Hub) -> list[str]:
    missing = []
    query = Object.select(Object.digest).distinct().order_by(Object.digest).tuples()
    for (digest,) in query.iterator():
        if digest != ids.object_digest(b"") and not hub.store.exists(BLOBS, digest):
            missing.append(digest)
    return missing


def _missing_packs(hub: Hub) -> list[str]:
    named = FetchMPackCache.select(FetchMPackCache.mpack_id).distinct().tuples()
    return sorted({ids.hex_of(m) for (m,) in named if not hub.store.exists(MPACKS, m)})


def run_fsck(hub: Hub, dry_run: bool = False) -> FsckReport:
    """Verify every stored blob and pack; quarantine, drop and report as the module docstring says."""
    started = time.perf_counter()
    report = FsckReport(dry_run=dry_run)
    report.blobs_quarantined = _check_namespace(hub, BLOBS, report)
    report.blobs_missing = [d for d in _missing_blobs(hub) if d not in set(report.blobs_quarantined)]
    forget_blobs(hub, sorted(set(report.blobs_quarantined) | set(report.blobs_missing)), report)
    report.packs_quarantined = _check_namespace(hub, MPACKS, report)
    for digest in sorted(set(report.packs_quarantined) | set(_missing_packs(hub))):
        _drop_rows_naming(hub, digest, report)
    report.duration_ms = int((time.perf_counter() - started) * 1000)
    log = hub.log.info if report.clean else hub.log.warning
    log("fsck finished", extra={k: v for k, v in report.as_dict().items() if k != "reupload"})
    return report
