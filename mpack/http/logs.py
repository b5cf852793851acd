"""Structured logs: one JSON object per line on stderr, for the app and for gunicorn alike.

One handler (``json_handler()``) writes every line: the ``mpackhub`` loggers,
the root logger (libraries, ``py.warnings``), and gunicorn's error and access
logs through ``GunicornJsonLogger`` (gunicorn's ``logger_class``). Fields
passed through ``extra=`` become keys.

Request ids: ``with_request_id`` wraps the WSGI app. Each request gets an id —
the client's ``X-Request-Id`` when it is sane (1-128 of ``A-Z a-z 0-9 . _ :
-``), a fresh one otherwise (a random per-process prefix and a counter) — which is sent back in ``X-Request-Id``,
added to every log line emitted while the app handles the request (a
contextvar read by ``RequestIdFilter``) and to the access line.

Nothing here logs request headers or query strings, so tokens and URL
signatures never reach the log. The access line's ``bytes`` is what gunicorn
wrote, including responses it sent with ``sendfile`` (which gunicorn itself
does not count).
"""
from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable

from gunicorn import glogging

from mpack.http.clients import client_of

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
REQUEST_ID_HEADER = "X-Request-Id"
ENVIRON_KEY = "mpackhub.request_id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("mpackhub_request_id", default=None)


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to a record emitted while a request is being handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = request_id.get()
        if current is not None and not hasattr(record, "request_id"):
            record.request_id = current
        return True


_handler: list[logging.Handler] = []


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not when the handler was made: a
    replaced stderr (a test's capture, since closed) must not turn a background thread's log line into
    a logging error."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def json_handler() -> logging.Handler:
    """The process's one stderr handler (JSON lines, request ids), created once."""
    if not _handler:
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
        handler.addFilter(RequestIdFilter())
        _handler.append(handler)
    return _handler[0]


def _attach(logger: logging.Logger) -> None:
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        logger.addHandler(json_handler())


def configure_logging(level: str = "INFO") -> None:
    """Send the ``mpackhub`` loggers, and anything that reaches the root logger, to stderr as JSON lines (idempotent)."""
    app = logging.getLogger("mpackhub")
    _attach(app)
    app.setLevel(level)
    app.propagate = False
    _attach(logging.getLogger())  # libraries and mpack.* modules: JSON too, never plain text
    logging.captureWarnings(True)


class _FreshIds:
    """Request ids: 12 random hex digits per process, then a counter (24 in all, unique per process).

    One ``os.urandom`` per request cost more than the rest of the access line;
    the prefix is drawn again in a forked child (``os.register_at_fork``: no
    ``getpid`` per request), so workers never share one.
    """

    def __init__(self) -> None:
        self._draw()
        os.register_at_fork(after_in_child=self._draw)

    def _draw(self) -> None:
        self._prefix, self._counter = os.urandom(6).hex(), itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"


_fresh_ids = _FreshIds()


def sane_request_id(value: str | None) -> str:
    """The client's id if it is sane, else a fresh one."""
    if value and _SANE_ID.fullmatch(value):
        return value
    return _fresh_ids.next()


def with_request_id(app: Callable, environ: dict, start_response: Callable) -> Iterable[bytes]:
    """Call the WSGI ``app`` under a request id (see the module docstring)."""
    rid = sane_request_id(environ.get("HTTP_X_REQUEST_ID"))
    environ[ENVIRON_KEY] = rid

    def start(status, headers, exc_info=None):
        headers.append((REQUEST_ID_HEADER, rid))
        return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

    token = request_id.set(rid)
    try:
        return app(environ, start)
    finally:
        request_id.reset(token)


def sent_bytes(resp, environ: dict) -> int:
    """Body bytes gunicorn wrote for ``resp``, including a completed ``sendfile``.

    gunicorn counts bytes it writes itself (``resp.sent``) but not those of
    ``sendfile``, which, when it returns, has sent exactly ``Content-Length``
    bytes; called from gunicorn's ``finally``, an exception in flight means it
    did not complete.
    """
    sent = getattr(resp, "sent", 0) or 0
    length = getattr(resp, "response_length", None)
    if (sent == 0 and length and environ.get("REQUEST_METHOD") != "HEAD" and getattr(resp, "headers_sent", False)
            and _status_code(resp) not in (204, 304) and sys.exc_info()[1] is None):
        return int(length)
    return int(sent)


def _status_code(resp) -> int:
    code = getattr(resp, "status_code", None)
    if isinstance(code, int):
        return code
    try:
        return int(str(resp.status).split(None, 1)[0])
    except (TypeError, ValueError):
        return 0


GUNICORN_SOCKET_ERROR = "Socket error processing request."  # gthread's message for an OSError while answering
STALL_CUT = "download cut: the client stopped reading"


class GunicornJsonLogger(glogging.Logger):
    """gunicorn's logger writing JSON lines through ``json_handler()`` (``logger_class`` in serving.py).

    The access line is built from a few fields only (gunicorn's default
    gathers every header and environ entry first): time, request id, remote
    address, method, path without its query string, status, bytes, ms.
    """

    def setup(self, cfg) -> None:
        self.cfg = cfg
        self._access_log_enabled = bool(cfg.accesslog)
        self.loglevel = self.LOG_LEVELS.get(cfg.loglevel.lower(), logging.INFO)
        self.error_log.setLevel(self.loglevel)
        self.access_log.setLevel(logging.INFO)
        for log in (self.error_log, self.access_log):
            log.handlers = [json_handler()]
            log.propagate = False
        _attach(logging.getLogger())
        logging.captureWarnings(True)

    def access(self, resp, req, environ, request_time) -> None:
        if not self._access_log_enabled:
            return
        try:
            self.access_log.info("request", extra={
                "request_id": environ.get(ENVIRON_KEY), "remote": client_of(environ),
                "method": environ.get("REQUEST_METHOD"), "path": environ.get("PATH_INFO"),
                "status": _status_code(resp), "bytes": sent_bytes(resp, environ),
                "ms": round(request_time.total_seconds() * 1000, 3),
            })
        except Exception:  # noqa: BLE001 — a log line must never fail a request
            self.error_log.exception("could not write an access log line")

    def exception(self, msg, *args, **kwargs) -> None:
        """A download cut for a stall (``send_timeout``: the socket's timeout, which only downloads set)
        is a warning without a traceback: the client stopped reading, nothing failed here."""
        if msg == GUNICORN_SOCKET_ERROR and isinstance(sys.exc_info()[1], TimeoutError):
            self.error_log.warning(STALL_CUT)
            return
        super().exception(msg, *args, **kwargs)

    def reopen_files(self) -> None:
        """Nothing to reopen: every line goes to stderr."""

    def close_on_exec(self) -> None:
        """Nothing to mark: stderr is inherited on purpose."""
