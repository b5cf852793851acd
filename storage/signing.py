"""Signed download URLs: HMAC-SHA256 over method, path and expiry.

A signed URL carries three query parameters: ``expires`` (unix seconds),
``kid`` (which key signed) and ``sig`` (unpadded urlsafe base64 of
HMAC-SHA256 over ``METHOD \\n path \\n expires``).

Guarantees:
    * The expiry is inside the signed message and capped at ``max_ttl``
      (7 days by default, as S3 and R2 do).
    * Keys are listed oldest to newest; the newest signs and every listed key
      verifies, so a key is rotated by appending a new one and dropping the
      oldest once the URLs it signed have expired.
    * Over-long or malformed parameters are refused before any HMAC work, and
      signatures are compared in constant time.
    * Every parameter has one spelling: ``expires`` without leading zeros,
      ``sig`` in canonical unpadded base64url, ``kid`` exactly as configured,
      so a token cannot be altered into a second valid token.
    * The signed path is canonical (``/``-separated unreserved characters, no
      ``.`` or ``..`` segments); ``mpack_path`` builds the one for an mpack.
    * A token signed for one method is no token for another. HEAD requests
      are verified as GET: callers pass ``"GET"`` when answering HEAD.
    * Secrets never appear in ``repr()`` or ``str()`` of a signer.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import re
import time
from collections.abc import Callable, Mapping, Sequence

from mpack.format.ids import hex_of
from storage.errors import InvalidUrlToken

DEFAULT_MAX_TTL = 7 * 24 * 3600
CLOCK_SLACK = 60  # seconds a verifier's clock may lag the signer's
MAX_PARAM_LENGTH = 200
PARAMS = ("expires", "kid", "sig")

_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_METHOD = re.compile(r"[A-Z]{1,16}")
_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")
_EXPIRES = re.compile(r"0|[1-9][0-9]{0,11}")  # one spelling per time: no leading zeros
_SIG = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, unpadded


def mpack_path(mpack_id: str) -> str:
    """The canonical download path of an mpack, from either id spelling.

    Raises:
        InvalidId: ``mpack_id`` is not a well-formed id.
    """
    return "/mpacks/" + hex_of(mpack_id)


class UrlSigner:
    """Signs and verifies download URLs with a rotating set of HMAC keys."""

    def __init__(
        self,
        keys: Sequence[tuple[str, bytes]],
        *,
        base_url: str,
        max_ttl: int = DEFAULT_MAX_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Build a signer.

        Args:
            keys: ``(key_id, secret)`` pairs, oldest first; the last one signs.
            base_url: scheme and host (and optional prefix) prepended to paths.
            max_ttl: the longest lifetime a URL may have, in seconds.
            clock: returns the current unix time; injected by tests.

        Raises:
            ValueError: no keys, a malformed or repeated key id, an empty or
                non-bytes secret, or a non-positive ``max_ttl``.
        """
        if not keys:
            raise ValueError("a UrlSigner needs at least one key")
        self._keys: dict[str, bytes] = {}
        for kid, secret in keys:
            _check_key(kid, secret, self._keys)
            self._keys[kid] = secret
        if isinstance(max_ttl, bool) or not isinstance(max_ttl, int) or max_ttl <= 0:
            raise ValueError("max_ttl must be a positive number of seconds")
        self._current = keys[-1][0]
        self.base_url = base_url.rstrip("/")
        self.max_ttl = max_ttl
        self._clock = clock

    def __repr__(self) -> str:
        return (f"UrlSigner(base_url={self.base_url!r}, key_ids={list(self._keys)!r}, "
                f"max_ttl={self.max_ttl})")

    __str__ = __repr__

    def sign(self, method: str, path: str, ttl: int) -> dict[str, str]:
        """Query parameters granting ``method`` on ``path`` for ``ttl`` seconds.

        The lifetime is capped at ``max_ttl``.

        Raises:
            ValueError: ``ttl`` is not positive, or the method or path is not
                canonical.
        """
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            raise TypeError("ttl must be an int number of seconds")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        method, path = _canonical_method(method), _canonical_path(path)
        if method is None or path is None:
            raise ValueError("method or path is not canonical")
        expires = int(self._clock()) + min(ttl, self.max_ttl)
        sig = _mac(self._keys[self._current], method, path, expires)
        return {"expires": str(expires), "kid": self._current, "sig": _b64(sig)}

    def url(self, method: str, path: str, ttl: int) -> str:
        """``base_url + path`` with the signed query string of ``sign()``.

        The three values need no escaping (digits, a key id and base64url are
        all unreserved characters), so the query is joined directly.
        """
        signed = self.sign(method, path, ttl)
        return f"{self.base_url}{path}?expires={signed['expires']}&kid={signed['kid']}&sig={signed['sig']}"

    def verify(self, method: str, path: str, params: Mapping[str, str]) -> None:
        """Check that ``params`` grant ``method`` on ``path`` now.

        Pass ``"GET"`` when verifying a HEAD request.

        Raises:
            InvalidUrlToken: a parameter is missing or malformed, the key id is
                unknown, the URL has expired or expires implausibly late, or
                the signature does not match.
        """
        expires, kid, sig = _read_params(params)
        secret = self._keys.get(kid)
        if secret is None:
            raise InvalidUrlToken("unknown key id")
        method, path = _canonical_method(method), _canonical_path(path)
        if method is None or path is None:
            raise InvalidUrlToken("malformed method or path")
        now = self._clock()
        if expires < now:
            raise InvalidUrlToken("expired")
        if expires > now + self.max_ttl + CLOCK_SLACK:
            raise InvalidUrlToken("expires too far in the future")
        if not hmac.compare_digest(sig, _mac(secret, method, path, expires)):
            raise InvalidUrlToken("bad signature")


def _check_key(kid: object, secret: object, seen: Mapping[str, bytes]) -> None:
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise ValueError(f"malformed key id {kid!r}: use 1-32 of [A-Za-z0-9_-]")
    if kid in seen:
        raise ValueError(f"key id {kid!r} is listed twice")
    if not isinstance(secret, bytes) or not secret:
        raise ValueError(f"the secret of key {kid!r} must be non-empty bytes")


def _read_params(params: Mapping[str, str]) -> tuple[int, str, bytes]:
    """Validate the three parameters' shapes, cheaply, before any HMAC work."""
    for name in PARAMS:
        value = params.get(name)
        if value is None:
            raise InvalidUrlToken(f"missing {name}")
        if not isinstance(value, str):
            raise InvalidUrlToken(f"malformed {name}: repeated or not text")
        if len(value) > MAX_PARAM_LENGTH:
            raise InvalidUrlToken(f"malformed {name}: too long")
    if not _EXPIRES.fullmatch(params["expires"]):
        raise InvalidUrlToken("malformed expires: not a unix time")
    sig = _unb64(params["sig"])
    if sig is None:
        raise InvalidUrlToken("malformed sig: not unpadded base64url of 32 bytes")
    return int(params["expires"]), params["kid"], sig


def _canonical_method(method: object) -> str | None:
    upper = method.upper() if isinstance(method, str) else ""
    return upper if _METHOD.fullmatch(upper) else None


def _canonical_path(path: object) -> str | None:
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        return None
    if "/." in path and any(part in (".", "..") for part in path.split("/")):  # only a "/." can start one
        return None
    return path


def _mac(secret: bytes, method: str, path: str, expires: int) -> bytes:
    message = f"{method}\n{path}\n{expires}".encode("ascii")
    return hmac.digest(secret, message, "sha256")  # one C call (OpenSSL), no HMAC object


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """Decode an unpadded base64url signature; None unless it is the canonical spelling."""
    if not _SIG.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=")
    except (binascii.Error, ValueError):
        return None
    # Refuse the other spellings of the same bytes (non-zero trailing bits).
    return raw if _b64(raw) == text else None
