"""A large object written into an ``S3Store`` piece by piece (``new_file``): a multipart upload on a temp key.

Parts of ``store.part_size`` go up as they fill, so memory stays flat however
large the pack; at commit the upload is completed and copied to its digest's
key inside the bucket (``S3Store._publish_copy``), or, when it all fit in one
part, written in one conditional PUT. An unfinished upload is listed by
``iter_temp`` and aborted by GC.
"""
from __future__ import annotations

import contextlib
from typing import Any, Protocol

from storage.errors import StorageError
from storage.pending import PendingFile
from storage.s3_client import BotoCoreError, ClientError, mapped


class _Bucket(Protocol):
    """What an upload needs of its ``S3Store``."""

    client: Any
    bucket: str
    part_size: int

    def _put_if_absent(self, namespace: str, digest: str, data: bytes) -> bool: ...

    def _publish_copy(self, temp_key: str, namespace: str, digest: str) -> bool: ...


class MultipartPending(PendingFile):
    """A multipart upload on a temp key; parts of ``part_size`` go up as they fill."""

    def __init__(self, store: _Bucket, namespace: str, name: str, key: str, upload_id: str) -> None:
        super().__init__(namespace, name)
        self._store = store
        self._key = key
        self._upload_id = upload_id
        self._buffer = bytearray()
        self._parts: list[dict] = []

    def _write(self, data: memoryview) -> None:
        self._buffer += data
        while len(self._buffer) >= self._store.part_size:
            chunk = bytes(self._buffer[:self._store.part_size])
            del self._buffer[:self._store.part_size]
            self._upload_part(chunk)

    def _upload_part(self, chunk: bytes) -> None:
        store, number = self._store, len(self._parts) + 1
        with mapped(f"cannot upload part {number} of a {self.namespace} object"):
            answer = store.client.upload_part(Bucket=store.bucket, Key=self._key, UploadId=self._upload_id,
                                              PartNumber=number, Body=chunk)
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def _publish(self, digest: str) -> bool:
        store = self._store
        if not self._parts:  # it all fits in one part: one conditional PUT, no copy
            self._check_upload_alive()
            return store._put_if_absent(self.namespace, digest, bytes(self._buffer))
        if self._buffer:
            self._upload_part(bytes(self._buffer))
            self._buffer.clear()
        with mapped(f"cannot complete the upload of {self.namespace} object {digest}"):
            store.client.complete_multipart_upload(Bucket=store.bucket, Key=self._key, UploadId=self._upload_id,
                                                   MultipartUpload={"Parts": self._parts})
        self._upload_id = ""  # completed: nothing left to abort, only the temp object to delete
        return store._publish_copy(self._key, self.namespace, digest)

    def _check_upload_alive(self) -> None:
        """A temp swept by GC (its upload aborted) must not be committed."""
        store = self._store
        removed = StorageError(f"the upload of temp {self.name} was removed before its commit")
        with mapped(f"cannot check the upload of temp {self.name}", missing=lambda: removed):
            store.client.list_parts(Bucket=store.bucket, Key=self._key, UploadId=self._upload_id)

    def _discard(self) -> None:
        # Best effort: what cannot be removed now is listed by iter_temp and swept by GC.
        store = self._store
        self._buffer = bytearray()
        with contextlib.suppress(ClientError, BotoCoreError):
            if self._upload_id:
                store.client.abort_multipart_upload(Bucket=store.bucket, Key=self._key, UploadId=self._upload_id)
            else:
                store.client.delete_object(Bucket=store.bucket, Key=self._key)
