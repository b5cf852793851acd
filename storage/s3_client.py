"""Talking to an S3-compatible bucket: the client, what its errors mean, streamed reads.

``make_client`` builds a boto3 client with SigV4 forced (``s3v4``), bounded
retries and timeouts; clients share one boto3 session (its service models are
loaded once). ``failure`` turns a botocore error into ours: an unreachable
bucket, a timeout or a 5xx answer is ``StorageUnavailable`` (retry later),
any other refusal ``StorageError``. ``BodyReader`` reads a GET's stream as a
binary file and maps network failures the same way.
"""
from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from storage.errors import StorageError, StorageUnavailable

try:  # boto3 is the optional 's3' extra
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # pragma: no cover - exercised only without the extra
    boto3 = None  # type: ignore[assignment]
    BotoCoreError = ClientError = OSError  # type: ignore[misc, assignment]

_SESSION_LOCK = threading.Lock()
_SESSIONS: list[Any] = []  # one boto3 session: its loaded service models are shared by every client
_UNAVAILABLE_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "some/path" without slashes at either end


def parse_store_url(url: str) -> S3Location:
    """``s3://bucket/prefix`` → its bucket and prefix; ValueError if it is not one."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    return S3Location(parts.netloc, parts.path.strip("/"))


def status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_missing(exc: ClientError) -> bool:
    return status(exc) == 404 or code(exc) in {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}


def failure(action: str, exc: Exception) -> StorageError:
    """A botocore exception as our error: unavailable (retry) or refused."""
    if isinstance(exc, ClientError):
        answered, name = status(exc), code(exc)
        if answered >= 500 or name in _UNAVAILABLE_CODES:
            return StorageUnavailable(f"{action}: the bucket answered {answered} {name}")
        return StorageError(f"{action}: the bucket refused ({answered} {name})")
    return StorageUnavailable(f"{action}: the bucket is unreachable ({type(exc).__name__})")


class Absent(Exception):  # noqa: N818 — a signal inside this package, never raised to callers
    """The bucket said the object is not there (``mapped(..., missing=Absent)`` with ``contextlib.suppress``)."""


@contextlib.contextmanager
def mapped(action: str, *, missing: Callable[[], Exception] | None = None) -> Iterator[None]:
    """botocore exceptions as our errors; with ``missing``, a 404 raises ``missing()`` instead."""
    try:
        yield
    except ClientError as exc:
        if missing is not None and is_missing(exc):
            raise missing() from None
        raise failure(action, exc) from exc
    except BotoCoreError as exc:
        raise failure(action, exc) from exc


def make_client(*, endpoint_url: str | None = None, region: str | None = None, max_attempts: int = 3,
                connect_timeout: float = 5.0, read_timeout: float = 30.0, pool_size: int = 32,
                credentials: tuple[str, str] | None = None) -> Any:
    """A boto3 S3 client with SigV4 forced, bounded retries and timeouts.

    Credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID``…,
    profiles, instance roles) unless ``credentials`` (key id, secret) is given. With an endpoint (R2, MinIO, a test server)
    path-style addressing is used, which every S3-compatible service accepts.
    """
    if boto3 is None:
        raise StorageError("the S3 store needs boto3: pip install 'mpackhub[s3]'")
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout, read_timeout=read_timeout, max_pool_connections=pool_size,
    )
    keys = {} if credentials is None else {"aws_access_key_id": credentials[0],
                                           "aws_secret_access_key": credentials[1]}
    with _SESSION_LOCK:  # creating clients is not thread-safe; using them is
        if not _SESSIONS:
            _SESSIONS.append(boto3.session.Session())
        return _SESSIONS[0].client("s3", endpoint_url=endpoint_url, region_name=region or "us-east-1",
                              config=config, **keys)


class BodyReader(io.RawIOBase):
    """A GET's streaming body as a binary file; network failures become ``StorageUnavailable``."""

    def __init__(self, body: Any, action: str) -> None:
        super().__init__()
        self._body = body
        self._action = action

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self._body.read(None if size is None or size < 0 else size)
        except (BotoCoreError, OSError) as exc:
            raise StorageUnavailable(f"{self._action}: the bucket connection failed ({type(exc).__name__})") from exc

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._body.close()
        super().close()
