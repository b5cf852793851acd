"""The one place where domain errors become HTTP responses.

Every error body is JSON ``{"error": code, "detail": text}``. Unexpected
exceptions are logged with their traceback and answered 500 without one. A
database that refuses or drops the connection (restarted, unreachable, locked
past the busy timeout) is answered 503 ``database_unavailable`` with
``Retry-After``, and the connection is dropped so the next request opens a
fresh one.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable

import falcon
import peewee as pw

from mpack.format.errors import MPackError
from mpack.http import admin_html
from mpack.hub import db as dbmod
from mpack.hub import errors

log = logging.getLogger("mpackhub.http")

STATUS_BY_ERROR: list[tuple[type[errors.MuseError], str]] = [
    (errors.BadRequest, falcon.HTTP_400),
    (errors.InvalidId, falcon.HTTP_400),
    (errors.Unauthorized, falcon.HTTP_401),
    (errors.Forbidden, falcon.HTTP_403),
    (errors.InvalidUrlToken, falcon.HTTP_403),
    (errors.NotFound, falcon.HTTP_404),
    (errors.BodyTimeout, falcon.HTTP_408),
    (errors.StoredObjectMissing, falcon.HTTP_404),
    (errors.NonFastForward, falcon.HTTP_409),
    (errors.AlreadyExists, falcon.HTTP_409),
    (errors.Conflict, falcon.HTTP_409),
    (errors.BodyTooLarge, falcon.HTTP_413),
    (errors.RangeNotSatisfiable, falcon.HTTP_416),
    (errors.Unprocessable, falcon.HTTP_422),
    (errors.ContentMismatch, falcon.HTTP_422),
    (errors.InvalidRecord, falcon.HTTP_422),
    (errors.StorageUnavailable, falcon.HTTP_503),  # before StorageError: a subclass
    (errors.StorageError, falcon.HTTP_507),
    (errors.ObjectUnavailable, falcon.HTTP_503),
    (errors.ServerBusy, falcon.HTTP_503),
    (MPackError, falcon.HTTP_500),
]


def status_for(exc: errors.MuseError) -> str:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return falcon.HTTP_500


def _error_body(code: str, detail: str) -> bytes:
    return json.dumps({"error": code, "detail": detail}).encode()


def handle_hub_error(req, resp, exc: errors.MuseError, params) -> None:
    status = status_for(exc)
    if isinstance(exc, errors.ServerBusy) and not isinstance(exc, errors.CacheFull):  # load shed, by design
        log.warning("request shed", extra={"path": req.path, "error": exc.code, "detail": exc.detail})
    elif status in (falcon.HTTP_500, falcon.HTTP_503, falcon.HTTP_507):  # the operator's to fix
        log.error("request failed", extra={"path": req.path, "error": exc.code, "detail": exc.detail})
    resp.status = status
    if getattr(req.context, "html", False):  # the admin page's forms: a page, not JSON
        resp.content_type = falcon.MEDIA_HTML
        resp.data = admin_html.error_page(status, exc.detail)
        return
    resp.content_type = falcon.MEDIA_JSON
    resp.data = _error_body(exc.code, exc.detail)
    if isinstance(exc, errors.Unauthorized):
        resp.set_header("WWW-Authenticate", 'Bearer realm="mpackhub"')
    if isinstance(exc, errors.StorageUnavailable):  # an outage the operator must see, answered "retry"
        log.warning("storage unavailable", extra={"path": req.path, "detail": exc.detail})
        resp.set_header("Retry-After", "5")
    if isinstance(exc, errors.ServerBusy):
        resp.set_header("Retry-After", str(exc.retry_after))
    if isinstance(exc, errors.RangeNotSatisfiable):
        resp.set_header("Content-Range", f"bytes */{exc.size}")


def handle_unexpected(req, resp, exc: Exception, params) -> None:
    if isinstance(exc, falcon.HTTPError):  # falcon's own (404 route, 405 method …)
        raise exc
    log.exception("unhandled error", extra={"path": req.path, "method": req.method})
    resp.status = falcon.HTTP_500
    resp.content_type = falcon.MEDIA_JSON
    resp.data = _error_body("internal_error", "the server failed; the error has been logged")


def handle_database_error(req, resp, exc: pw.DatabaseError, params) -> None:
    """A full database is the operator's to fix, not a bug: 507 with a clear error, no traceback."""
    if not dbmod.is_disk_full(exc):
        handle_unexpected(req, resp, exc, params)
        return
    log.error("database full", extra={"path": req.path, "method": req.method})
    full = errors.DatabaseFull()
    resp.status = status_for(full)
    resp.content_type = falcon.MEDIA_JSON
    resp.data = _error_body(full.code, full.detail)


def database_error_handler(discard_connection: Callable[[], None]):
    """The handler for ``db.CONNECTION_ERRORS``: drop the connection, answer 503 (507 for a full disk)."""
    def handle(req, resp, exc: Exception, params) -> None:
        if not dbmod.is_connection_error(exc):  # SQLITE_FULL and PostgreSQL's disk_full are OperationalErrors too
            handle_database_error(req, resp, exc, params)
            return
        discard_connection()
        log.warning("database unavailable", extra={"path": req.path, "error": type(exc).__name__})
        resp.status = falcon.HTTP_503
        resp.content_type = falcon.MEDIA_JSON
        resp.set_header("Retry-After", "1")
        resp.data = _error_body("database_unavailable", "the database is unavailable; retry shortly")
    return handle


def serialize_http_error(req, resp, exc: falcon.HTTPError) -> None:
    title = (exc.title or "error").split(" ", 1)[-1] if (exc.title or "")[:3].isdigit() else (exc.title or "error")
    code = title.lower().replace(" ", "_")
    resp.content_type = falcon.MEDIA_JSON
    resp.data = _error_body(code, exc.description or exc.title or "")


def install(app: falcon.App, discard_connection: Callable[[], None] = lambda: None) -> None:
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(pw.DatabaseError, handle_database_error)
    app.add_error_handler(dbmod.CONNECTION_ERRORS, database_error_handler(discard_connection))
    app.add_error_handler(errors.MuseError, handle_hub_error)
    app.set_error_serializer(serialize_http_error)
