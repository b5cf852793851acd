"""Who a request comes from: its peer's address or, when the peer is a trusted proxy, the address it forwards.

Behind the proxy the README recommends, every request's peer is the proxy
(127.0.0.1): the access log and the per-client bound on pack builds
(``mpack/hub/build_gate.py``) would see one client. A peer listed in
``MPACKHUB_TRUSTED_PROXIES`` (default: this machine) is taken at its word
for the last address of ``X-Forwarded-For`` — the one it appended or set
itself; addresses before it came from the client and are never used. From
any other peer the header is ignored.
"""
from __future__ import annotations

import re
from collections.abc import Collection

ENVIRON_KEY = "mpackhub.client_address"
FORWARDED_FOR = "HTTP_X_FORWARDED_FOR"
# The characters of an IPv4 or IPv6 address (no port, no zone): anything else is not an address a proxy set.
_ADDRESS = re.compile(r"[0-9A-Fa-f.:]{2,45}")


def note_client(environ: dict, trusted: Collection[str]) -> None:
    """Put the client's address in ``environ`` when a trusted proxy forwarded it (see ``client_of``)."""
    forwarded = environ.get(FORWARDED_FOR)
    if forwarded and environ.get("REMOTE_ADDR") in trusted:
        nearest = forwarded.rsplit(",", 1)[-1].strip()
        if _ADDRESS.fullmatch(nearest):
            environ[ENVIRON_KEY] = nearest


def client_of(environ: dict) -> str:
    """The client's address: as a trusted proxy forwarded it (``note_client``), else the peer's."""
    return environ.get(ENVIRON_KEY) or environ.get("REMOTE_ADDR") or "-"


def from_trusted_proxy(environ: dict, trusted: Collection[str]) -> bool:
    """Whether the request's peer is a trusted proxy (what it does with the answer can be relied on)."""
    return environ.get("REMOTE_ADDR") in trusted
