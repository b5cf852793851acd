"""Presigned uploads into a bucket: ``incoming/<repo>/<hex>``, checked and adopted by the push that names them.

``POST /presign`` hands the Muse CLI a presigned PUT per object the repo
lacks (``presign_put``); the push that references the object reads the upload
once, hashes it while writing it to its content address, and deletes it
(``adopt_upload``). Uploads no push adopted are listed for GC
(``iter_incoming``, ``remove_incoming``). A mixin of ``S3Store``, which
provides the client, the bucket, the key prefix and the primitives used here.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from storage.base import BLOBS, check_digest
from storage.errors import ContentMismatch
from storage.s3_client import Absent, BodyReader, mapped

READ_CHUNK = 1024 * 1024  # an upload is read and hashed this much at a time
_REPO_KEY = re.compile(r"[A-Za-z0-9._-]{1,128}")
_UPLOAD_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}/[0-9a-f]{64}")  # <repo key>/<hex digest>


class PresignedUploads:
    """``S3Store``'s presigned uploads (see the module docstring)."""

    def _incoming_key(self, repo_key: str, digest: str) -> str:
        if not _REPO_KEY.fullmatch(repo_key):
            raise ValueError(f"not a repository key: {repo_key!r}")
        return f"{self.prefix}incoming/{repo_key}/{check_digest(digest)}"

    def presign_put(self, repo_key: str, digest: str, ttl_seconds: int) -> str:
        """A presigned PUT to this repository's incoming area, checked by ``adopt_upload`` later."""
        return self._presign("put_object", self._incoming_key(repo_key, digest), ttl_seconds)

    def iter_incoming(self) -> Iterator[tuple[str, float]]:
        start = f"{self.prefix}incoming/"
        for item in self._list(start):
            name = item["Key"][len(start):]
            if self._incoming_name(name):
                yield name, item["LastModified"].timestamp()

    def remove_incoming(self, name: str) -> bool:
        if not self._incoming_name(name):
            raise ValueError(f"not an upload name: {name!r}")
        key = f"{self.prefix}incoming/{name}"
        if self._head(key) is None:
            return False
        with mapped(f"cannot remove upload {name}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return True

    @staticmethod
    def _incoming_name(name: str) -> bool:
        return _UPLOAD_NAME.fullmatch(name) is not None

    def adopt_upload(self, repo_key: str, digest: str) -> int | None:
        """Verify a presigned upload and publish it as a blob → its size, or None if absent or wrong.

        The bytes are read once through the hub and written to their content
        address from what was hashed (so a client swapping the upload midway
        cannot slip other bytes in); the incoming copy is then deleted.
        """
        source = self._incoming_key(repo_key, digest)
        response = None
        with contextlib.suppress(Absent), mapped(f"cannot read upload {digest}", missing=Absent):
            response = self.client.get_object(Bucket=self.bucket, Key=source)
        if response is None:
            return None
        body = BodyReader(response["Body"], f"reading upload {digest}")
        try:
            with body, self.new_file(BLOBS) as pending:
                for chunk in iter(lambda: body.read(READ_CHUNK), b""):
                    pending.write(chunk)
                size = pending.size
                pending.commit(digest)
        except ContentMismatch:
            size = None
        with mapped(f"cannot remove upload {digest}"):
            self.client.delete_object(Bucket=self.bucket, Key=source)
        return size
