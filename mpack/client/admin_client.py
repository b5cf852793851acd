"""The client side of the admin API: ``mpackhub admin|jobs|gc|fsck --url URL`` against a running hub.

One JSON request per call to the existing ``/admin/*`` routes with
``Authorization: Bearer <admin token>``; no redirects followed. Every failure
is one ``ClientError`` naming the hub and the status. The admin token never
travels over plain http except to this machine (as every token of ours).
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from urllib.parse import urlsplit

from mpack.client.hub_client import NETWORK_ERRORS, ClientError, TransportError, error_detail, no_redirect_opener, token_allowed

TOKEN_ENV = "MPACKHUB_ADMIN_TOKEN"
MAX_ANSWER = 16 << 20


class AdminClient:
    """The admin routes of the hub at ``base_url`` (``http(s)://host[:port]``, as ``mpackhub serve`` prints)."""

    def __init__(self, base_url: str, admin_token: str | None, *, timeout: float = 300.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ClientError(f"--url must look like http://host:port, not {base_url!r}")
        if not admin_token:
            raise ClientError(f"--url needs the admin token: --admin-token or ${TOKEN_ENV}")
        if not token_allowed(base_url):
            raise ClientError(f"refusing to send the admin token over plain http to {parts.hostname}; use https")
        self.url, self.host = base_url.rstrip("/"), parts.netloc
        self.token, self.timeout = admin_token, timeout
        self._opener = no_redirect_opener()

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Accept": "application/json", "Authorization": f"Bearer {self.token}", "Connection": "close"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            with exc:
                detail = error_detail(exc.read(64 << 10), exc.headers.get("Content-Type", "") if exc.headers else "")
            raise ClientError(f"HTTP {exc.code} from {self.host}: {detail}", exc.code) from None
        except NETWORK_ERRORS as exc:
            raise TransportError(f"cannot reach {self.host}: {getattr(exc, 'reason', exc)}") from None
        try:
            answer = json.loads(raw)
        except ValueError:
            raise ClientError(f"{self.host} did not answer JSON on {path}") from None
        if not isinstance(answer, dict):
            raise ClientError(f"{self.host} did not answer a JSON object on {path}")
        return answer

    def create_user(self, name: str) -> str:
        """``POST /admin/users``: the new user's token (shown once)."""
        return str(self._call("POST", "/admin/users", {"username": name})["token"])

    def jobs(self, limit: int) -> dict:
        """``GET /admin/jobs``: ``{"counts": {status: n}, "recent": [job, …]}``."""
        return self._call("GET", "/admin/jobs?" + urllib.parse.urlencode({"limit": limit}))

    def gc(self, repo: str | None, dry_run: bool) -> dict:
        """``POST /admin/gc``: the GC report."""
        body: dict = {"dry_run": dry_run}
        if repo is not None:
            body["repo"] = repo
        return self._call("POST", "/admin/gc", body)

    def fsck(self, dry_run: bool) -> dict:
        """``POST /admin/fsck``: the fsck report."""
        return self._call("POST", "/admin/fsck", {"dry_run": dry_run})
