"""Admin sessions for the status page: a signed, expiring value, never the admin token itself.

A session value is ``<expires>.<nonce>.<signature>``: the signature is an
HMAC-SHA256, keyed by a key derived from the admin token, over the expiry and
the nonce. Any worker can check it without shared state; changing the admin
token ends every session. The page's CSRF token is a second HMAC of the same
nonce, so each session has its own. Every comparison is constant-time.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mpack.hub.errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from mpack.hub.services import Hub

SESSION_TTL = 12 * 3600
_VALUE = re.compile(r"(\d{1,12})\.([A-Za-z0-9_-]{16,64})\.([0-9a-f]{64})")
MAX_TOKEN_LENGTH = 512


@dataclass(frozen=True)
class Session:
    value: str
    expires_at: int
    csrf: str


def _key(hub: Hub) -> bytes:
    return hmac.new(hub.settings.admin_token.encode(), b"mpackhub admin session v1", hashlib.sha256).digest()


def _mac(hub: Hub, purpose: str, message: str) -> str:
    return hmac.new(_key(hub), f"{purpose}\0{message}".encode(), hashlib.sha256).hexdigest()


def _session(hub: Hub, expires: int, nonce: str) -> Session:
    value = f"{expires}.{nonce}.{_mac(hub, 'session', f'{expires}.{nonce}')}"
    return Session(value, expires, _mac(hub, "csrf", nonce))


def login(hub: Hub, token: object) -> Session:
    """A new session for the admin token; Forbidden for any other token."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise Forbidden("not the admin token")
    if not hmac.compare_digest(token.encode(), hub.settings.admin_token.encode()):
        raise Forbidden("not the admin token")
    return _session(hub, int(hub.now()) + SESSION_TTL, secrets.token_urlsafe(24))


def check(hub: Hub, value: str | None) -> Session:
    """The session a cookie value names; Unauthorized when absent, forged or expired."""
    match = _VALUE.fullmatch(value or "")
    if match is None:
        raise Unauthorized("log in with the admin token")
    expires, nonce, signature = match.groups()
    expected = _mac(hub, "session", f"{expires}.{nonce}")
    if not hmac.compare_digest(signature, expected) or int(expires) <= hub.now():
        raise Unauthorized("the session is invalid or has expired: log in again")
    return _session(hub, int(expires), nonce)


def check_csrf(session: Session, given: object) -> None:
    """Forbidden unless ``given`` is this session's CSRF token."""
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), session.csrf.encode()):
        raise Forbidden("missing or wrong CSRF token: reload the page and try again")
