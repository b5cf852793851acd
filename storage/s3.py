"""S3Store: blobs and mpacks in an S3-compatible bucket (AWS S3, Cloudflare R2, MinIO).

Layout under ``s3://<bucket>/<prefix>``::

    <prefix>/blobs/<hex>                   blob bytes
    <prefix>/mpacks/<hex>                  mpack files
    <prefix>/tmp/<32 hex>.tmp              objects being written (multipart uploads)
    <prefix>/incoming/<repo>/<hex>         presigned uploads waiting to be verified
    <prefix>/quarantine/<namespace>/<hex>.<ns time>   damaged objects moved aside (fsck)

Promises (those of ``storage.base``, on a bucket):
    * A final key only ever holds bytes that hash to its name. ``put_bytes``
      hashes first and writes with ``If-None-Match: *`` (so one of several
      racing writers reports ``True``). ``new_file`` streams into a multipart
      upload on a temp key, ``PART_SIZE`` at a time (memory stays flat however
      large the pack), and publishes by a server-side copy once the digest is
      known; small files skip the upload and are written in one PUT.
    * An unfinished multipart upload is invisible to readers; ``iter_temp``
      lists it (its creation time is in its name, independent of the bucket's
      clock) so GC can abort it, as a bucket lifecycle rule would.
    * Download URLs are the bucket's own presigned GETs, always SigV4
      (``s3v4``), never longer than 7 days: pack bytes never pass through the hub.
    * A write of an object already stored keeps it if it still hashes to its
      name and replaces it otherwise (a damaged object is repaired by writing
      it again); that check reads the stored object once.
    * An unreachable bucket, a timeout, or a 5xx answer raises
      ``StorageUnavailable`` (retry later); any other refusal ``StorageError``.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from storage.base import (
    MPACKS,
    PendingFile,
    RecentlyFound,
    Store,
    check_digest,
    check_namespace,
    check_temp_name,
    is_temp_name,
)
from storage.errors import ContentMismatch, StorageError, StoredObjectMissing
from storage.s3_client import (
    Absent,
    BodyReader,
    BotoCoreError,
    ClientError,
    S3Location,
    code,
    failure,
    mapped,
    status,
)
from storage.s3_incoming import PresignedUploads
from storage.s3_upload import MultipartPending
from storage.signing import UrlSigner

SIGV4_MAX_TTL = 7 * 24 * 3600  # SigV4 presigned URLs cannot live longer (AWS S3 docs)
PART_SIZE = 8 * 1024 * 1024  # S3 needs parts of at least 5 MiB, except the last
DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys
PROBE_BYTES = 4096  # the health check's write
EXISTS_MEMO_SECONDS = 30.0  # how long still_exists trusts a positive answer
EXISTS_MEMO_SIZE = 10_000
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _new_temp_name(now: float) -> str:
    """A temp name that carries its creation time (8 hex of unix seconds) and 24 random hex."""
    return f"{int(now):08x}{secrets.token_hex(12)}.tmp"


def _temp_created(name: str) -> float:
    return float(int(name[:8], 16))


class S3Store(PresignedUploads, Store):
    """A content-addressed store in an S3-compatible bucket (see the module docstring)."""

    signs_own_urls = True
    concurrent_opens = 8  # of the client's pool of at least 10 connections (bootstrap: 16 and more)
    accepts_presigned_uploads = True

    def __init__(self, client: Any, location: S3Location, signer: UrlSigner, *,
                 part_size: int = PART_SIZE, clock: Callable[[], float] = time.time) -> None:
        """Use ``location`` in the bucket through ``client`` (see ``make_client``).

        Args:
            client: a boto3 S3 client.
            location: bucket and key prefix.
            signer: kept for the hub's own download route (URLs signed before a move to S3).
            part_size: bytes per multipart part (5 MiB minimum on S3).
            clock: unix time, stamped into temp names; injected by tests.
        """
        super().__init__(signer)
        self.client = client
        self.bucket = location.bucket
        self.prefix = location.prefix + "/" if location.prefix else ""
        self.part_size = part_size
        self._clock = clock
        self._seen = RecentlyFound(EXISTS_MEMO_SECONDS, EXISTS_MEMO_SIZE)  # keys a HEAD found (still_exists)

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix})"

    # -- keys --------------------------------------------------------------------

    def key(self, namespace: str, digest: str) -> str:
        """The bucket key of an object (validated namespace and digest)."""
        return f"{self.prefix}{check_namespace(namespace)}/{check_digest(digest)}"

    def _temp_key(self, name: str) -> str:
        return f"{self.prefix}tmp/{name}"

    # -- reads -------------------------------------------------------------------

    def open(self, namespace: str, digest: str) -> BinaryIO:
        key = self.key(namespace, digest)
        with mapped(f"cannot open {namespace} object {digest}", missing=lambda: self._missing(namespace, digest)):
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        return BodyReader(response["Body"], f"reading {namespace} object {digest}")  # type: ignore[return-value]

    def exists(self, namespace: str, digest: str) -> bool:
        try:
            self.stat(namespace, digest)
        except StoredObjectMissing:
            return False
        return True

    def still_exists(self, namespace: str, digest: str) -> bool:
        """``exists``, trusting a positive answer for ``EXISTS_MEMO_SECONDS``: a cache hit costs no HEAD then.

        Only packs damaged outside the hub go unnoticed meanwhile (GC deletes a
        pack only once no row names it, and this store forgets what it deletes).
        """
        key = self.key(namespace, digest)
        return self._seen.ask(key, lambda: self._head(key) is not None)

    def _forget(self, keys: Iterable[str]) -> None:
        self._seen.forget(keys)

    def stat(self, namespace: str, digest: str) -> tuple[int, float]:
        key = self.key(namespace, digest)
        with mapped(f"cannot stat {namespace} object {digest}", missing=lambda: self._missing(namespace, digest)):
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        return int(head["ContentLength"]), head["LastModified"].timestamp()

    def iter_digests(self, namespace: str) -> Iterator[str]:
        return self._iter_digests(f"{self.prefix}{check_namespace(namespace)}/")  # namespace checked eagerly

    def iter_mtimes(self, namespace: str) -> Iterator[tuple[str, float]]:
        start = f"{self.prefix}{check_namespace(namespace)}/"
        for item in self._list(start):  # LastModified comes with the listing: no HEAD per object
            name = item["Key"][len(start):]
            if _HEX64.fullmatch(name):
                yield name, item["LastModified"].timestamp()

    def _iter_digests(self, start: str) -> Iterator[str]:
        for item in self._list(start):
            name = item["Key"][len(start):]
            if _HEX64.fullmatch(name):
                yield name

    def _list(self, prefix: str) -> Iterator[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        with mapped(f"cannot list {prefix}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                yield from page.get("Contents", [])

    def local_path(self, namespace: str, digest: str) -> str | None:
        self.key(namespace, digest)  # validates
        return None

    # -- writes ------------------------------------------------------------------

    def put_bytes(self, namespace: str, digest: str, data: bytes) -> bool:
        """Hash, then one conditional PUT: True if this call created (or repaired) the object."""
        self.key(namespace, digest)  # validates namespace and digest before any hashing
        actual = hashlib.sha256(data).hexdigest()
        if actual != check_digest(digest):
            raise ContentMismatch("object", digest, actual)
        return self._put_if_absent(namespace, actual, bytes(data))

    def _put_if_absent(self, namespace: str, digest: str, data: bytes) -> bool:
        """One conditional PUT → True if it created the object; an object already there is kept if intact."""
        key = self.key(namespace, digest)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            # 412: already there; 409 ConditionalRequestConflict: a racing writer of the same bytes.
            if status(exc) == 412 or code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return self._repair_if_damaged(namespace, digest, lambda: self._put(key, data))
            raise failure(f"cannot write {key}", exc) from exc
        except BotoCoreError as exc:
            raise failure(f"cannot write {key}", exc) from exc
        return True

    def _put(self, key: str, data: bytes) -> None:
        with mapped(f"cannot write {key}"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def _repair_if_damaged(self, namespace: str, digest: str, rewrite: Callable[[], None]) -> bool:
        """The object exists: keep it (touched) if it hashes to its name → False; else ``rewrite`` it → True."""
        if self.intact(namespace, digest):
            if namespace == MPACKS:
                self._touch(self.key(namespace, digest))
            return False
        rewrite()
        return True

    def delete(self, namespace: str, digest: str) -> bool:
        key = self.key(namespace, digest)
        self._forget([key])
        if not self.exists(namespace, digest):
            return False
        with mapped(f"cannot delete {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return True

    def delete_many(self, namespace: str, digests: Iterable[str]) -> int:
        """Delete objects with DeleteObjects, 1,000 keys a request → how many were asked for."""
        keys = [self.key(namespace, d) for d in digests]
        self._forget(keys)
        for start in range(0, len(keys), DELETE_BATCH):
            chunk = keys[start:start + DELETE_BATCH]
            with mapped(f"cannot delete {len(chunk)} {namespace} objects"):
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
            errors = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                raise StorageError(f"the bucket refused to delete {len(errors)} objects ({errors[0].get('Code')})")
        return len(keys)

    def _new_pending(self, namespace: str) -> PendingFile:
        name = _new_temp_name(self._clock())
        key = self._temp_key(name)
        with mapped(f"cannot start an upload for a {namespace} object"):
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        return MultipartPending(self, namespace, name, key, upload_id)

    def _publish_copy(self, temp_key: str, namespace: str, digest: str) -> bool:
        """Copy a completed temp object to its final key unless an intact object is there already."""
        final_key = self.key(namespace, digest)

        def copy() -> None:
            with mapped(f"cannot publish {final_key}"):
                # The managed copy switches to UploadPartCopy past 5 GB; bytes stay in the bucket.
                self.client.copy({"Bucket": self.bucket, "Key": temp_key}, self.bucket, final_key)

        if self._head(final_key) is not None:
            return self._repair_if_damaged(namespace, digest, copy)
        copy()
        return True

    def _touch(self, key: str) -> None:
        """Refresh LastModified: GC's orphan grace counts from the latest publication."""
        with contextlib.suppress(ClientError, BotoCoreError):
            self.client.copy({"Bucket": self.bucket, "Key": key}, self.bucket, key,
                             ExtraArgs={"MetadataDirective": "REPLACE"})

    def _head(self, key: str) -> dict | None:
        with contextlib.suppress(Absent), mapped(f"cannot stat {key}", missing=Absent):
            return self.client.head_object(Bucket=self.bucket, Key=key)
        return None

    @staticmethod
    def _missing(namespace: str, digest: str) -> StoredObjectMissing:
        return StoredObjectMissing(namespace, check_digest(digest))

    # -- health and repair -------------------------------------------------------

    def probe_write(self) -> None:
        """Write and delete a small temp object; StorageUnavailable or StorageError if the bucket will not."""
        key = self._temp_key(_new_temp_name(self._clock()))
        with mapped("cannot write to the bucket"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(PROBE_BYTES))
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def quarantine(self, namespace: str, digest: str, *, keep_intact: bool = True) -> str | None:
        """Move a damaged object to ``<prefix>quarantine/<namespace>/<hex>.<ns time>`` → its ``s3://`` URL.

        A writer that repairs the object between the check and the move loses
        its repair; the next write of those bytes repairs it again.
        """
        key = self.key(namespace, digest)
        hex_digest = check_digest(digest)
        if self._head(key) is None or (keep_intact and self.intact(namespace, hex_digest)):
            return None
        aside = f"{self.prefix}quarantine/{namespace}/{hex_digest}.{time.time_ns()}"
        self._forget([key])
        with mapped(f"cannot quarantine {namespace} object {hex_digest}"):
            self.client.copy({"Bucket": self.bucket, "Key": key}, self.bucket, aside)
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return f"s3://{self.bucket}/{aside}"

    # -- temp files --------------------------------------------------------------

    def iter_temp(self) -> Iterator[tuple[str, float]]:
        start = self._temp_key("")
        names: set[str] = set()
        paginator = self.client.get_paginator("list_multipart_uploads")
        with mapped("cannot list uploads"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
                names.update(u["Key"][len(start):] for u in page.get("Uploads", []))
        names.update(item["Key"][len(start):] for item in self._list(start))
        for name in sorted(names):
            if is_temp_name(name):
                yield name, _temp_created(name)

    def remove_temp(self, name: str) -> bool:
        key = self._temp_key(check_temp_name(name))
        removed = False
        with mapped(f"cannot remove temp {name}"):
            uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key).get("Uploads", [])
            for upload in uploads:
                if upload["Key"] == key:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])
                    removed = True
        if self._head(key) is not None:
            with mapped(f"cannot remove temp {name}"):
                self.client.delete_object(Bucket=self.bucket, Key=key)
            removed = True
        return removed

    # -- signed URLs -------------------------------------------------------------------

    def presign_mpack_get(self, mpack_id: str, ttl_seconds: int) -> str:
        """The bucket's own presigned GET (SigV4), valid ``ttl_seconds`` (at most 7 days)."""
        return self.presign_get(MPACKS, mpack_id, ttl_seconds)

    def presign_get(self, namespace: str, digest: str, ttl_seconds: int) -> str:
        key = self.key(namespace, digest)
        return self._presign("get_object", key, ttl_seconds)

    def _presign(self, operation: str, key: str, ttl_seconds: int) -> str:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        return self.client.generate_presigned_url(
            operation, Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=min(int(ttl_seconds), SIGV4_MAX_TTL))
