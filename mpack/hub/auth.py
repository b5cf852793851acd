"""Users and API tokens.

A token is shown once, at creation; the database keeps only its SHA-256, so a
leaked database does not leak tokens, and looking a token up by its hash
reveals nothing through timing. The admin token is compared in constant time.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import TYPE_CHECKING

import peewee as pw

from mpack.hub.errors import AlreadyExists, Forbidden, InvalidField, Unauthorized
from mpack.hub.models import ApiToken, User

if TYPE_CHECKING:
    from mpack.hub.services import Hub

TOKEN_PREFIX = "mph_"
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# First path segments the hub's own routes use: an owner of that name would be shadowed.
RESERVED_USERNAMES = frozenset({"admin", "api", "healthz", "metrics", "mpacks", "static"})


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_username(name: object) -> str:
    if not isinstance(name, str) or not USERNAME.fullmatch(name) or name.endswith((".git", ".")):
        raise InvalidField("username", "1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit")
    if name.lower() in RESERVED_USERNAMES:
        raise InvalidField("username", f"{name!r} is reserved")
    return name


def create_user(hub: Hub, username: object) -> tuple[User, str]:
    """Create a user and its first token; returns the token (shown once)."""
    name = check_username(username)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        with hub.db.atomic():
            user = User.create(username=name, created_at=hub.now())
            ApiToken.create(token_hash=hash_token(token), user=user, label="initial", created_at=hub.now())
    except pw.IntegrityError:
        raise AlreadyExists(f"user {name} already exists (usernames are unique without regard to case)") from None
    return user, token


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header, None when absent."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 512:
        raise Unauthorized("Authorization must be 'Bearer <token>'")
    return token


def user_for(authorization: str | None) -> User | None:
    """The user a request acts for: None when anonymous; 401 for an unknown token."""
    token = bearer_token(authorization)
    if token is None:
        return None
    row = ApiToken.select(ApiToken, User).join(User).where(ApiToken.token_hash == hash_token(token)).first()
    if row is None:
        raise Unauthorized("unknown token")
    return row.user


def require_user(authorization: str | None) -> User:
    user = user_for(authorization)
    if user is None:
        raise Unauthorized("this call needs 'Authorization: Bearer <token>'")
    return user


def require_admin(hub: Hub, authorization: str | None) -> None:
    """401 without a token, 403 with one that is not the admin token."""
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized("this call needs the admin token")
    if not hmac.compare_digest(token.encode(), hub.settings.admin_token.encode()):
        raise Forbidden("not the admin token")
