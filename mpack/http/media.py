"""Request and response bodies: msgpack or JSON, chosen per request.

The Muse CLI sends msgpack (``use_bin_type=True``) and decodes every response
as msgpack, so a response is msgpack whenever ``Accept`` names it and JSON
otherwise. JSON carries bytes as base64 strings (documented in README).

Every body is bounded before and while it is decoded (issue 9):
- a byte limit per route (``BodyLimits``): push and push/objects carry blobs
  and get ``max_body_bytes``; every other route carries ids and names and gets
  ``max_small_body_bytes``; over it → 413 before anything is decoded;
- msgpack is decoded with per-container limits (array and map lengths, string,
  bin and ext sizes) that fit the route, and every decoded container is charged
  its memory as it is built: past ``MEMORY_FACTOR`` times the body the decode
  stops (413 ``body_too_complex``), so no body costs more than a few times its
  size however it nests (``{"want": [{}, {}, …]}`` once cost 70×);
- JSON is charged the same way, from a count of its tokens, before decoding;
  lone surrogates (``"\\ud800"``), which no UTF-8 text can carry, are refused.
"""
from __future__ import annotations

import base64
import json
import re
import sys
from dataclasses import dataclass

import falcon
import msgpack

from mpack.http.bodies import read_raw
from mpack.hub.errors import BodyTooComplex, MalformedBody
from mpack.hub.settings import Settings

MSGPACK = "application/x-msgpack"
JSON = "application/json"

MEMORY_FACTOR = 3  # decoded objects may take this many times the body (the raw body is one more)
MEMORY_SLACK = 1024 * 1024  # small bodies are never refused for their shape
_HIGH, _LOW = rb"\\u[dD][89abAB][0-9a-fA-F]{2}", rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
# An escaped UTF-16 half not paired with its other half: a pair (an emoji as json.dumps
# writes it) does not match. A match may still be text (an escaped backslash before "u"),
# so it only calls for the exact check.
_LONE_SURROGATE = re.compile(rb"%s(?!%s)|(?<!%s)%s" % (_HIGH, _LOW, _HIGH, _LOW))


@dataclass(frozen=True)
class BodyLimits:
    """What one route's body may hold."""

    max_bytes: int
    max_array_len: int
    max_map_len: int
    max_str_len: int
    max_bin_len: int
    max_ext_len: int


MAX_IDS = 100_000  # ids in one want/have/object_ids list (a fetch naming every local commit)


def small_limits(settings: Settings) -> BodyLimits:
    """Routes that carry ids, names and flags: refs, fetch, fetch/mpack, negotiate, filter-objects,
    presign, the repo API and the admin routes."""
    size = min(settings.max_small_body_bytes, settings.max_body_bytes)
    return BodyLimits(size, max_array_len=MAX_IDS, max_map_len=256, max_str_len=64 * 1024,
                      max_bin_len=64 * 1024, max_ext_len=0)


def large_limits(settings: Settings) -> BodyLimits:
    """push and push/objects: commits, snapshots (manifests of many paths) and blob bytes."""
    size = settings.max_body_bytes
    return BodyLimits(size, max_array_len=min(size, 4_000_000), max_map_len=min(size, 4_000_000),
                      max_str_len=size, max_bin_len=size, max_ext_len=16)


def read_body(req: falcon.Request, limits: BodyLimits, *, optional: bool = False) -> dict:
    """The request body as a dict (msgpack or JSON by Content-Type); ``{}`` when absent and ``optional``."""
    raw = read_raw(req, limits.max_bytes)
    if not raw:
        if optional:
            return {}
        raise MalformedBody("empty request body")
    body = decode(raw, (req.content_type or "").lower(), limits)
    if not isinstance(body, dict):
        raise MalformedBody("request body must be a map")
    return body


def decode(raw: bytes, content_type: str, limits: BodyLimits) -> object:
    """``raw`` as msgpack (by ``content_type``) or JSON, within ``limits`` and the memory budget."""
    if "msgpack" in content_type:
        return _decode_msgpack(raw, limits, _Budget(MEMORY_FACTOR * len(raw) + MEMORY_SLACK))
    return _decode_json(raw)


class _TooComplex(Exception):
    pass


class _Budget:
    """Charges each decoded container (its slots and the objects in them) against a byte budget."""

    def __init__(self, left: int) -> None:
        self.left = left

    def charge_list(self, items: list) -> list:
        self.left -= sys.getsizeof(items) + sum(map(sys.getsizeof, items))
        if self.left < 0:
            raise _TooComplex
        return items

    def charge_map(self, items: dict) -> dict:
        self.left -= sys.getsizeof(items) + sum(map(sys.getsizeof, items)) + sum(map(sys.getsizeof, items.values()))
        if self.left < 0:
            raise _TooComplex
        return items


def _too_complex() -> BodyTooComplex:
    return BodyTooComplex("the request body decodes to more objects than its size allows")


def _decode_msgpack(raw: bytes, limits: BodyLimits, budget: _Budget) -> object:
    try:
        return msgpack.unpackb(
            raw, raw=False, strict_map_key=True, list_hook=budget.charge_list, object_hook=budget.charge_map,
            max_array_len=limits.max_array_len, max_map_len=limits.max_map_len, max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len, max_ext_len=limits.max_ext_len)
    except _TooComplex:
        raise _too_complex() from None
    except Exception as exc:  # noqa: BLE001 — msgpack raises many unrelated types (ValueError, ExtraData, TypeError, …)
        raise MalformedBody(f"malformed or over-limit msgpack: {type(exc).__name__}") from None


# What a JSON token can cost once decoded, at most (CPython 3.11, 64-bit): a string's
# header beyond its characters; a value's slot with its number (a comma); a dict
# entry beyond its slot (a colon); a small dict or list with its slot. Counted in the
# raw bytes, so a quote or comma inside a string counts too, and keys are charged
# although the decoder shares repeated ones: the estimate errs high, hence its
# larger factor (real peaks stay under MEMORY_FACTOR times the body).
_JSON_STRING, _JSON_ITEM, _JSON_ENTRY, _JSON_DICT, _JSON_LIST = 49, 40, 48, 200, 96
JSON_ESTIMATE_FACTOR = 4


def json_cost(raw: bytes) -> int:
    """An upper estimate of the memory ``json.loads(raw)`` takes, from token counts alone."""
    return (len(raw) + raw.count(b'"') // 2 * _JSON_STRING + (raw.count(b",") + 1) * _JSON_ITEM
            + raw.count(b":") * _JSON_ENTRY + raw.count(b"{") * _JSON_DICT + raw.count(b"[") * _JSON_LIST)


# A body this short is within budget whatever it holds: json_cost is at most ~201 bytes per byte
# (a "{"), and 201 × 5,000 is below MEMORY_SLACK. A clone's fetch/mpack body (~100 bytes) skips the count.
JSON_ALWAYS_AFFORDABLE = 5000


def _decode_json(raw: bytes) -> object:
    if len(raw) > JSON_ALWAYS_AFFORDABLE and json_cost(raw) > JSON_ESTIMATE_FACTOR * len(raw) + MEMORY_SLACK:
        raise _too_complex()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise MalformedBody("malformed JSON: nested too deeply") from None
    if b"\\u" in raw and _LONE_SURROGATE.search(raw):  # a pair is fine (an emoji); a lone half cannot be stored
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedBody("malformed JSON: a string holds a lone UTF-16 surrogate") from None
    return body


def wants_msgpack(req: falcon.Request) -> bool:
    return "msgpack" in (req.get_header("Accept") or "").lower()


def send(req: falcon.Request, resp: falcon.Response, data: dict, status: str = falcon.HTTP_200) -> None:
    """Render ``data`` as msgpack or JSON for this request."""
    resp.status = status
    if wants_msgpack(req):
        resp.content_type = MSGPACK
        resp.data = msgpack.packb(data, use_bin_type=True)
    else:
        resp.content_type = JSON
        resp.data = json.dumps(data, default=_json_default, separators=(",", ":")).encode()


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot encode {type(value).__name__}")

