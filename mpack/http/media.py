"""Request and response bodies: msgpack or JSON, chosen per request.

The Muse CLI sends msgpack (``use_bin_type=True``) and decodes every response
as msgpack, so a response is msgpack whenever ``Accept`` names it and JSON
otherwise. JSON carries bytes as base64 strings (documented in README).
Bodies are read with a hard limit: a body over ``max_bytes`` is refused with
413 before it is decoded.
"""
from __future__ import annotations

import base64
import json

import falcon
import msgpack

from mpack.hub.errors import BodyTooLarge, MalformedBody

MSGPACK = "application/x-msgpack"
JSON = "application/json"


def read_body(req: falcon.Request, max_bytes: int, *, optional: bool = False) -> dict:
    """The request body as a dict (msgpack or JSON by Content-Type); ``{}`` when absent and ``optional``."""
    length = req.content_length
    if length is not None and length > max_bytes:
        raise BodyTooLarge(f"request body of {length} bytes exceeds the limit of {max_bytes}")
    # A chunked body has no Content-Length; a server that ends the stream at the
    # body's end says so with wsgi.input_terminated (gunicorn does).
    chunked = length is None and req.env.get("wsgi.input_terminated")
    raw = (req.stream if chunked else req.bounded_stream).read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise BodyTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
    if not raw:
        if optional:
            return {}
        raise MalformedBody("empty request body")
    body = _decode(raw, (req.content_type or "").lower())
    if not isinstance(body, dict):
        raise MalformedBody("request body must be a map")
    return body


def _decode(raw: bytes, content_type: str) -> object:
    if "msgpack" in content_type:
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as exc:  # noqa: BLE001 — msgpack raises many unrelated types (ValueError, ExtraData, TypeError, …)
            raise MalformedBody(f"malformed msgpack: {type(exc).__name__}") from None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise MalformedBody("malformed JSON: nested too deeply") from None


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

