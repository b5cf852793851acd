"""A front for the test bucket: checks presigned URLs' SigV4 signatures and injects faults.

moto serves a presigned GET whatever its signature says, so a tampered or
expired bucket URL would pass unnoticed. ``BucketFront`` is a small HTTP proxy
in front of the moto server: requests signed in the query string (presigned
URLs) are verified here — the canonical request, string to sign and signing
key are rebuilt from the AWS SigV4 documentation, independently of botocore —
and answered 403 if wrong or expired; everything else is passed on. ``fail``
makes it answer 503 (or any status) to chosen requests, ``down`` closes it.
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, urlsplit

SIGV4_MAX_EXPIRES = 7 * 24 * 3600


def _uri_encode(text: str) -> str:
    return quote(text, safe="-_.~")


def sigv4_query_signature(method: str, url: str, secret: str) -> str:
    """The SigV4 signature a presigned URL should carry (AWS docs: "Authenticating Requests:
    Using Query Parameters (AWS Signature Version 4)"); payload is UNSIGNED-PAYLOAD."""
    parts = urlsplit(url)
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "X-Amz-Signature"]
    query = "&".join(f"{_uri_encode(k)}={_uri_encode(v)}" for k, v in sorted(params))
    fields = dict(params)
    signed = fields["X-Amz-SignedHeaders"].split(";")
    headers = {"host": parts.netloc}
    canonical_headers = "".join(f"{name}:{headers[name].strip()}\n" for name in signed)
    canonical = "\n".join([method, parts.path or "/", query, canonical_headers, ";".join(signed), "UNSIGNED-PAYLOAD"])
    _, day, region, service, terminal = fields["X-Amz-Credential"].split("/")
    scope = f"{day}/{region}/{service}/{terminal}"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", fields["X-Amz-Date"], scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (day, region, service, terminal):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def check_presigned(method: str, url: str, secret: str, now: float | None = None) -> str | None:
    """None if ``url`` is a valid, unexpired SigV4 presigned URL for ``method``; else why not."""
    fields = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    if fields.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        return "not SigV4"
    try:
        signed_at = datetime.strptime(fields["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        expires = int(fields["X-Amz-Expires"])
        expected = sigv4_query_signature(method, url, secret)
    except (KeyError, ValueError):
        return "malformed"
    if not 1 <= expires <= SIGV4_MAX_EXPIRES:
        return "expiry out of range"
    if (time.time() if now is None else now) > signed_at.timestamp() + expires:
        return "expired"
    if not hmac.compare_digest(expected, fields.get("X-Amz-Signature", "")):
        return "signature mismatch"
    return None


class BucketFront:
    """A proxy on 127.0.0.1 in front of an S3 endpoint (see the module docstring)."""

    def __init__(self, upstream: str, secret: str) -> None:
        self.upstream = urlsplit(upstream)
        self.secret = secret
        self.fault: Callable[[str, str], int | None] = lambda method, path: None
        self.presigned_seen: list[tuple[str, str, str | None]] = []  # (method, path, refusal)
        self.is_down = False
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                front.handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # dropped connections are the point
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> BucketFront:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def down(self) -> None:
        """Stop answering: connections to the front are refused from now on."""
        if not self.is_down:
            self.is_down = True
            self.server.shutdown()
            self.server.server_close()

    def fail(self, status: int | None = 503, when: Callable[[str, str], bool] = lambda method, path: True) -> None:
        """Answer ``status`` to requests ``when`` matches; ``fail(None)`` heals."""
        self.fault = (lambda method, path: status if when(method, path) else None) if status else \
            (lambda method, path: None)

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        if self.is_down:  # a kept-alive connection: drop it without an answer
            request.close_connection = True
            return
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        status = self.fault(request.command, request.path)
        if status is not None:
            code = {500: "InternalError", 503: "ServiceUnavailable", 403: "AccessDenied"}.get(status, "Fault")
            return self._reply(request, status, f"<Error><Code>{code}</Code></Error>".encode(), {})
        if "X-Amz-Signature=" in request.path:
            url = f"http://{request.headers.get('Host')}{request.path}"
            refusal = check_presigned("GET" if request.command == "HEAD" else request.command, url, self.secret)
            self.presigned_seen.append((request.command, urlsplit(request.path).path, refusal))
            if refusal:
                return self._reply(request, 403, f"<Error><Code>AccessDenied</Code><Message>{refusal}"
                                   f"</Message></Error>".encode(), {})
        self._forward(request, body)

    def _forward(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("connection", "keep-alive")}
            connection.request(request.command, request.path, body=body or None, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            passed = {k: v for k, v in answer.getheaders()
                      if k.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date")}
            self._reply(request, answer.status, data, passed, head=request.command == "HEAD",
                        length=answer.getheader("Content-Length"))
        finally:
            connection.close()

    @staticmethod
    def _reply(request: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict, *, head: bool = False,
               length: str | None = None) -> None:
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", length if head and length is not None else str(len(data)))
        request.end_headers()
        if not head:
            request.wfile.write(data)


def bucket_http(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, bytes]:
    """One plain request to a (presigned) bucket URL → (status, body)."""
    # An explicit type: urllib's default (form-urlencoded) makes moto's server wait for a form.
    request = urllib.request.Request(url, method=method, data=data, headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
