"""The HTTP side of the client: wire calls to a hub, signed pack downloads, the push protocol.

Stdlib ``urllib`` only, one request per connection, no redirects (as the Muse
CLI). Bodies are msgpack (``use_bin_type=True``); responses are decoded by
their ``Content-Type`` (msgpack or JSON). Every failure is one ``ClientError``
whose detail is a single line; connection-level failures are the
``TransportError`` subclass, which a caller may retry. A hub that answers
503 with ``Retry-After`` (every builder busy, storage briefly unavailable, the
pack cache full: nothing was done) is asked again after that many seconds,
up to ``BUSY_WAIT`` seconds of waiting per client. A pack is read as it
arrives (``PackStream``) and a download that breaks off resumes where it
stopped, with ``Range``. A token is never sent over plain http except to
localhost, 127.0.0.1 or ::1.
"""
from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import urljoin, urlsplit

import msgpack

from mpack.format import ids
from mpack.format.errors import MuseError

MSGPACK = "application/x-msgpack"
ACCEPT = f"{MSGPACK}, application/json"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_RESPONSE = 64 << 20  # the Muse CLI reads at most this much of a wire response
PUSH_CHUNK_OBJECTS = 400
PUSH_CHUNK_BYTES = 32 << 20  # keeps a chunk of large blobs well under the hub's body limit
DOWNLOAD_CHUNK = 1 << 20
DOWNLOAD_ATTEMPTS = 3  # connections in a row that bring no byte before a download gives up
RETRY_PAUSE = 0.2  # seconds, times the number of failures so far
BUSY_WAIT = 120.0  # seconds one client waits in all on 503 + Retry-After answers before it gives up
MAX_RETRY_AFTER = 60  # one wait is at most this long, whatever the hub asks
_DELAY_SECONDS = re.compile(r"[0-9]{1,9}")  # Retry-After's delay-seconds form (a hub never sends the date form)
EMPTY_BLOB = ids.object_digest(b"")  # never transferred: every hub holds it
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError)

Progress = Callable[[int, int | None], None]
BusyNotice = Callable[[str, int], None]  # (the hub's reason, seconds until the next try)


class ClientError(MuseError):
    """A call to the hub failed; ``status`` is the HTTP status when there was one."""

    code = "client_error"

    def __init__(self, detail: str, status: int | None = None, headers: dict | None = None) -> None:
        super().__init__(" ".join(detail.split()))  # always one line
        self.status, self.headers = status, headers or {}


class TransportError(ClientError):
    """The connection failed or broke off; retrying may succeed."""

    code = "transport_error"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError for the 3xx itself


def no_redirect_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_NoRedirect)


def error_detail(body: bytes, content_type: str) -> str:
    try:
        data = msgpack.unpackb(body, raw=False) if "msgpack" in content_type else json.loads(body)
    except Exception:  # noqa: BLE001 — any undecodable body is shown as text
        data = None
    if isinstance(data, dict) and isinstance(data.get("detail"), str):
        return data["detail"]
    return body[:400].decode("utf-8", errors="replace") or "(empty body)"


def _decode(raw: bytes, content_type: str) -> dict:
    try:
        data = json.loads(raw) if "json" in content_type else msgpack.unpackb(raw, raw=False)
    except Exception as exc:  # noqa: BLE001 — msgpack raises many unrelated types
        raise ClientError(f"malformed response from the hub: {type(exc).__name__}") from None
    return data if isinstance(data, dict) else {}


def _read_limited(response, limit: int = MAX_RESPONSE) -> bytes:
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > limit:
        raise ClientError(f"response of {length} bytes exceeds the limit of {limit}")
    raw = response.read(limit + 1)
    if len(raw) > limit:
        raise ClientError(f"response exceeds the limit of {limit} bytes")
    return raw


def _one_request_per_connection(request: urllib.request.Request) -> urllib.request.Request:
    request.add_header("Connection", "close")
    return request


def _chunks(object_ids: list[str], read_object: Callable[[str], bytes]) -> Iterator[list[dict]]:
    chunk, size = [], 0
    for object_id in object_ids:
        content = read_object(object_id)
        if chunk and (len(chunk) >= PUSH_CHUNK_OBJECTS or size + len(content) > PUSH_CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append({"object_id": object_id, "content": content})
        size += len(content)
    if chunk:
        yield chunk


def token_allowed(remote_url: str) -> bool:
    """True when a token may travel to this remote: https, or plain http to this machine."""
    parts = urlsplit(remote_url)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOCAL_HOSTS)


class HubClient:
    """One remote repository: ``http(s)://host[:port]/{owner}/{repo}``."""

    def __init__(self, remote_url: str, token: str | None = None, *, timeout: float = 60.0,
                 busy_wait: float = BUSY_WAIT, on_busy: BusyNotice | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = remote_url.rstrip("/")
        parts = urlsplit(self.url)
        path = parts.path.strip("/").split("/")
        if parts.scheme not in ("http", "https") or not parts.hostname or len(path) != 2 or not all(path):
            raise ClientError(f"remote must look like https://host/owner/repo, not {remote_url!r}")
        if token and not token_allowed(self.url):
            raise ClientError(f"refusing to send a token over plain http to {parts.hostname}; use https")
        self.host, self.token, self.timeout = parts.netloc, token or None, timeout
        self._opener = no_redirect_opener()
        self._busy_left, self._on_busy, self._sleep = busy_wait, on_busy, sleep

    # -- plumbing -------------------------------------------------------------------

    def _open(self, request: urllib.request.Request):
        """Send ``request`` (again after a 503 that says when to retry, within the busy budget)."""
        while True:
            try:
                return self._open_once(request)
            except ClientError as exc:
                pause = self._busy_pause(exc)
                if pause is None:
                    raise
                if self._on_busy is not None:
                    self._on_busy(exc.detail, pause)
                self._sleep(pause)

    def _busy_pause(self, exc: ClientError) -> int | None:
        """Seconds to wait before asking again, or None: not a 503 with Retry-After, or no budget left."""
        after = exc.headers.get("retry-after", "").strip()
        if exc.status != 503 or not _DELAY_SECONDS.fullmatch(after):
            return None
        pause = min(max(int(after), 1), MAX_RETRY_AFTER)  # at least a second: the budget always shrinks
        if pause > self._busy_left:
            return None
        self._busy_left -= pause
        return pause

    def _open_once(self, request: urllib.request.Request):
        try:
            return self._opener.open(_one_request_per_connection(request), timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read(64 << 10) if exc.fp is not None else b""
            except NETWORK_ERRORS:
                body = b""
            finally:
                exc.close()
            headers = {k.lower(): v for k, v in exc.headers.items()} if exc.headers else {}
            detail = error_detail(body, headers.get("content-type", ""))
            raise ClientError(f"HTTP {exc.code} from {self.host}: {detail}", exc.code, headers) from None
        except NETWORK_ERRORS as exc:
            raise TransportError(f"cannot reach {self.host}: {getattr(exc, 'reason', exc)}") from None

    def call(self, method: str, suffix: str, body: dict | None = None) -> dict:
        """One wire call (``{url}/{suffix}``), msgpack both ways; the decoded map."""
        headers = {"Accept": ACCEPT}
        data = None
        if body is not None:
            headers["Content-Type"] = MSGPACK
            data = msgpack.packb(body, use_bin_type=True)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(f"{self.url}/{suffix}", data=data, method=method, headers=headers)
        with self._open(request) as response:
            try:
                raw = _read_limited(response)
            except NETWORK_ERRORS as exc:
                raise TransportError(f"connection to {self.host} broke off: {exc}") from None
            return _decode(raw, response.headers.get("Content-Type", ""))

    # -- reading ----------------------------------------------------------------------

    def refs(self) -> dict:
        """``GET /refs``: ``{repo_id, domain, default_branch, branch_heads}`` with the CLI's defaults."""
        answer = self.call("GET", "refs")
        heads = answer.get("branch_heads")
        answer["branch_heads"] = heads if isinstance(heads, dict) else {}
        answer.setdefault("domain", "midi")
        answer.setdefault("default_branch", "main")
        return answer

    def fetch_mpack(self, want: list[str], have: Iterable[str]) -> dict:
        """``POST /fetch/mpack``: ``{mpack_id, mpack_url, commit_count, blob_count, size_bytes, …}``."""
        answer = self.call("POST", "fetch/mpack", {"want": list(want), "have": list(have)})
        if not ids.is_id(answer.get("mpack_id")) or not isinstance(answer.get("mpack_url"), str):
            raise ClientError("the hub answered fetch/mpack without an mpack_id and mpack_url")
        return answer

    def open_pack(self, url: str, *, attempts: int = DOWNLOAD_ATTEMPTS) -> PackStream:
        """A signed pack URL opened for reading as it arrives (``PackStream``); no token is sent."""
        return PackStream(self, urljoin(self.url + "/", url), attempts=attempts)

    # -- pushing ----------------------------------------------------------------------

    def push(self, commits: list[dict], snapshots: list[dict], read_object: Callable[[str], bytes],
             branch: str, force: bool = False) -> dict:
        """The Muse CLI's push: ``filter-objects`` → ``push/objects`` in chunks → ``push``.

        Args:
            commits: Commit records, breadth-first from the new tip (tip first).
            snapshots: The snapshots those commits name.
            read_object: Returns the bytes of an object id.
            branch: The branch to move.
            force: Replace the branch head even if it is not an ancestor.

        Returns:
            The hub's answer ``{ok, message, branch_heads}``.

        Raises:
            ClientError: With ``status == 409`` for a non-fast-forward push.
        """
        object_ids = sorted({o for s in snapshots for o in s["manifest"].values() if ids.hex_of(o) != EMPTY_BLOB})
        missing: set = set()
        if object_ids:
            missing = set(self.call("POST", "filter-objects", {"object_ids": object_ids}).get("missing") or [])
        for chunk in _chunks([o for o in object_ids if o in missing], read_object):
            self.call("POST", "push/objects", {"objects": chunk})
        bundle = {"commits": commits, "snapshots": snapshots, "objects": []}
        answer = self.call("POST", "push", {"bundle": bundle, "branch": branch, "force": force})
        if answer.get("ok") is not True:
            raise ClientError(f"push refused: {answer.get('message') or 'no reason given'}")
        return answer


class PackStream:
    """A pack download read as a file, for the verifying reader to consume as it arrives.

    ``read(n)`` returns up to ``n`` bytes (``b""`` only at the end of the pack).
    A connection that breaks off, or ends before its ``Content-Length``, is
    reopened with ``Range: bytes=<offset>-`` and the read goes on where it
    stopped: the reader's state (hashes, the record under way) is untouched.
    ``attempts`` connections in a row that bring nothing raise
    ``TransportError``. A hub that ignores the range (200) has the bytes
    already read skipped; one that answers another range, or a pack of another
    size, raises ``ClientError``. Nothing here checks the bytes: the reader
    checks every record and the pack's id, so a resumed stream that differs
    fails there and nothing is applied.
    """

    def __init__(self, client: HubClient, url: str, *, attempts: int = DOWNLOAD_ATTEMPTS,
                 pause: float = RETRY_PAUSE) -> None:
        self._client, self._url, self._attempts, self._pause = client, url, attempts, pause
        self._response = None
        self.offset, self.total, self.resumes = 0, None, 0

    def __enter__(self) -> PackStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def open(self) -> PackStream:
        """Connect now (``read`` connects on its own): the total size is then known."""
        self._with_retries(None)
        return self

    def read(self, n: int = -1) -> bytes:
        return self._with_retries(lambda: self._response.read(n if n >= 0 else None))

    def _with_retries(self, read: Callable[[], bytes] | None) -> bytes:
        failures = 0
        while True:
            try:
                if self._response is None:
                    self._connect()
                if read is None:  # open(): connected
                    return b""
                data = read()
            except TransportError as exc:
                problem = str(exc)
            except NETWORK_ERRORS as exc:
                problem = f"download from {self._client.host} broke off at {self.offset} bytes: {exc}"
            else:
                if data or self.total is None or self.offset >= self.total:
                    self.offset += len(data)
                    return data
                problem = f"download from {self._client.host} stopped at {self.offset} of {self.total} bytes"
            self.close()
            failures += 1
            if failures >= self._attempts:
                raise TransportError(problem)
            time.sleep(self._pause * failures)

    def _connect(self) -> None:
        headers = {"Range": f"bytes={self.offset}-"} if self.offset else {}
        response = self._client._open(urllib.request.Request(self._url, headers=headers))
        try:
            start, total = _window(response, self.offset)
            if start is None or (self.total is not None and total is not None and total != self.total):
                raise ClientError(f"the pack at {self._client.host} changed while it was downloaded "
                                  f"(asked from byte {self.offset}, answered {response.headers.get('Content-Range')!r})")
            if start < self.offset:
                self.resumes += 1
                _skip(response, self.offset - start)
            elif self.offset:
                self.resumes += 1
        except BaseException:
            response.close()
            raise
        self.total = total if total is not None else self.total
        self._response = response


def _skip(response, count: int) -> None:
    """Read and drop ``count`` bytes of a response (a 200 to a ranged request)."""
    while count:
        data = response.read(min(count, DOWNLOAD_CHUNK))
        if not data:
            raise TransportError("the pack ended before the bytes already read")
        count -= len(data)


def _window(response, offset: int) -> tuple[int | None, int | None]:
    """(start, total size) of a download response; start None if a 206 is not the range asked for."""
    if response.status != 206:
        length = response.headers.get("Content-Length")
        return 0, int(length) if length and length.isdigit() else None
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) != offset:
        return None, None
    return offset, int(match.group(3))
