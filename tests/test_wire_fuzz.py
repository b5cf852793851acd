"""Wire fuzzing (issue 9): random and mutated requests against every route → never a 5xx.

A seeded generator (``MPACKHUB_FUZZ_SEED``, default 9) builds requests from
valid ones — msgpack and JSON bodies with fields dropped, retyped or replaced
by hostile values, bytes flipped or cut, random headers, paths and query
strings — anonymous, as the owner, as a stranger and as the admin, for a fixed
time budget (``MPACKHUB_FUZZ_SECONDS``, default 20). Each answer must be below
500 with a JSON error body when it is an error, nothing may be logged with a
traceback, and a refused request must leave the database rows and the files
under the hub's home exactly as they were. The database refuses NUL in a query
parameter as PostgreSQL does, so the SQLite run finds what would fail there.
"""
from __future__ import annotations

import io
import json
import logging
import os
import random
import time
from urllib.parse import quote, unquote_to_bytes

import msgpack
import pytest

from app import create_app
from mpack.hub.models import ApiToken, BackgroundJob, Branch, Commit, FetchMPackCache, Object, Repo, Snapshot, User
from tests.factories import History, make_repo, push_history, refuse_nul_like_postgresql, unpack, wire

SEED = int(os.environ.get("MPACKHUB_FUZZ_SEED", "9"))
SECONDS = float(os.environ.get("MPACKHUB_FUZZ_SECONDS", "20"))
MSGPACK, JSON = "application/x-msgpack", "application/json"
MODELS = (User, ApiToken, Repo, Branch, Commit, Snapshot, Object, FetchMPackCache, BackgroundJob)


class Fuzzer:
    """Makes one request at a time from what a valid request to each route looks like."""

    def __init__(self, rng: random.Random, world: dict) -> None:
        self.rng = rng
        self.world = world

    # -- values -------------------------------------------------------------------------

    def hostile(self, depth: int = 0) -> object:
        w, r = self.world, self.rng
        pool = [
            None, True, False, 0, -1, 2**63, -(2**64) + 1, 1.5, float("inf"), "", "x" * r.randint(1, 3000),
            "\x00", "../../etc/passwd", "HEAD", "-x", "a b", "\u202e", "main", w["tip"], w["tip"][-64:],
            "sha256:" + w["tip"][-64:], "sha256:" + "g" * 64, "0" * 64, "0" * 63, "Z" * 64, b"", b"\xff" * 8,
            msgpack.ExtType(7, b"e"), msgpack.Timestamp(1, 5), w["blob_id"], "\ud800", "é" * 10, "🎵",
        ]
        if depth < 3 and r.random() < 0.25:
            return [self.hostile(depth + 1) for _ in range(r.randint(0, 4))]
        if depth < 3 and r.random() < 0.2:
            return {r.choice(["want", "have", "object_ids", "x", "", "objects", "bundle"]): self.hostile(depth + 1)
                    for _ in range(r.randint(0, 3))}
        return r.choice(pool)

    def mutate(self, value: object, depth: int = 0) -> object:
        r = self.rng
        if isinstance(value, dict) and value and depth < 6:
            value = dict(value)
            key = r.choice(list(value))
            roll = r.random()
            if roll < 0.2:
                del value[key]
            elif roll < 0.45:
                value[key] = self.hostile()
            elif roll < 0.5:
                value[r.choice(["extra", key + "x", ""])] = self.hostile()
            else:
                value[key] = self.mutate(value[key], depth + 1)
            return value
        if isinstance(value, list) and value and depth < 6:
            value = list(value)
            index = r.randrange(len(value))
            roll = r.random()
            if roll < 0.3:
                value[index] = self.hostile()
            elif roll < 0.4:
                value.append(self.hostile())
            elif roll < 0.5:
                value = value * r.randint(2, 50)
            else:
                value[index] = self.mutate(value[index], depth + 1)
            return value
        return self.hostile() if r.random() < 0.7 else value

    # -- encodings ----------------------------------------------------------------------

    def encode(self, body: object) -> tuple[bytes, str | None]:
        r = self.rng
        content_type = r.choice([MSGPACK, MSGPACK, JSON, JSON, None, "text/plain", "application/x-msgpack; q=%"])
        try:
            if content_type and "msgpack" in content_type:
                raw = msgpack.packb(body, use_bin_type=True)
            else:
                raw = json.dumps(body, default=lambda v: repr(v)).encode("utf-8", "surrogatepass")
        except (ValueError, TypeError, OverflowError):
            raw = os.urandom(r.randint(0, 64))
        roll = r.random()
        if roll < 0.15 and raw:
            cut = r.randrange(len(raw))
            raw = raw[:cut]
        elif roll < 0.3 and raw:
            raw = bytearray(raw)
            for _ in range(r.randint(1, 4)):
                raw[r.randrange(len(raw))] = r.randrange(256)
            raw = bytes(raw)
        elif roll < 0.35:
            raw = bytes(r.randrange(256) for _ in range(r.randint(0, 200)))
        return raw, content_type

    # -- requests -----------------------------------------------------------------------

    def path(self, template: str) -> str:
        r = self.rng
        owner, name = r.choice([("gabriel", "song")] * 5 + [("gabriel", "secret")] * 2 + [("nobody", "none"), ("gabriel", "..")])
        path = template.format(owner=owner, repo=name, mpack=self.world["mpack_path"])
        roll = r.random()
        if roll < 0.1:
            segments = path.split("/")
            segments[r.randrange(1, len(segments))] = r.choice(
                ["%ED%A0%80", "%00", "%FF", "x" * 3000, "..", "", "%2F", quote("é"), "\x7f"])
            path = "/".join(segments)
        elif roll < 0.15:
            path += r.choice(["/", "//", "/extra", "?x=1"])
        return path

    def headers(self) -> dict[str, str]:
        r, w = self.rng, self.world
        headers = {}
        roll = r.random()
        if roll < 0.45:
            headers["HTTP_AUTHORIZATION"] = "Bearer " + w["owner"]
        elif roll < 0.7:
            headers["HTTP_AUTHORIZATION"] = "Bearer " + r.choice([w["stranger"], w["admin"]])
        elif roll < 0.85:
            headers["HTTP_AUTHORIZATION"] = r.choice(["Bearer ", "bearer ", "Basic ", "", "Bearer  "]) + r.choice(
                [w["owner"], "mph_" + "x" * 40, "", "\xe9\xff", w["owner"][:-1], "x" * 5000])
        if r.random() < 0.5:
            headers["HTTP_ACCEPT"] = r.choice([MSGPACK, JSON, "*/*", "", "\xff"])
        if r.random() < 0.3:
            headers["HTTP_RANGE"] = r.choice(["bytes=0-10", "bytes=-5", "bytes=" + "9" * r.randint(1, 6000) + "-",
                                              "bytes=5-1", "bytes=0-0,2-3", "bytes=x", "bytes=-0", "items=1-2"])
        return headers


ROUTES = [
    # (method, path template, a valid body or None)
    ("GET", "/healthz", None),
    ("GET", "/admin/jobs", None),
    ("POST", "/admin/users", {"username": "newcomer"}),
    ("POST", "/admin/gc", {"dry_run": True}),
    ("POST", "/api/repos", {"name": "fresh", "visibility": "public"}),
    ("GET", "/api/repos/{owner}/{repo}", None),
    ("GET", "/{owner}/{repo}/refs", None),
    ("POST", "/{owner}/{repo}/filter-objects", "filter"),
    ("POST", "/{owner}/{repo}/presign", "presign"),
    ("POST", "/{owner}/{repo}/push/objects", "objects"),
    ("POST", "/{owner}/{repo}/push", "push"),
    ("POST", "/{owner}/{repo}/fetch", "fetch"),
    ("POST", "/{owner}/{repo}/negotiate", "fetch"),
    ("POST", "/{owner}/{repo}/fetch/mpack", "fetch"),
    ("GET", "{mpack}", None),
    ("HEAD", "{mpack}", None),
]


def valid_body(kind: object, world: dict) -> object:
    if not isinstance(kind, str):
        return kind
    return {
        "filter": {"object_ids": [world["blob_id"]]},
        "presign": {"object_ids": [world["blob_id"]], "direction": "put"},
        "objects": {"objects": [{"object_id": world["blob_id"], "content": world["blob"]}]},
        "push": {"bundle": world["bundle"], "branch": "main", "force": False},
        "fetch": {"want": [world["tip"]], "have": [world["parent"]]},
    }[kind]


def call(app, method: str, path: str, query: str, raw: bytes, content_type: str | None, headers: dict):
    """The app called as gunicorn calls it: PATH_INFO percent-decoded, as latin-1 text (PEP 3333)."""
    environ = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": "hub.test", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(raw), "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "CONTENT_LENGTH": str(len(raw)) if raw else "", **headers,
    }
    if content_type:
        environ["CONTENT_TYPE"] = content_type
    answer = {}

    def start_response(status, response_headers, exc_info=None):
        answer["status"] = int(status.split()[0])
        answer["headers"] = dict(response_headers)

    chunks = app(environ, start_response)
    try:
        body = b"".join(chunks) if method != "HEAD" else b""
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    return answer["status"], answer["headers"], body


def state(hub) -> tuple:
    rows = tuple(model.select().count() for model in MODELS)
    files = tuple(sorted(str(p.relative_to(hub.settings.home)) for p in hub.settings.home.rglob("*")))
    return rows, files


@pytest.fixture
def world(app, hub, owner, stranger, repo) -> dict:
    make_repo(hub, owner[0], "secret", "private")
    history = History().linear(3)
    push_history(app, owner[1], "/gabriel/song", history)
    push_history(app, owner[1], "/gabriel/secret", history)
    answer = unpack(wire(app, "POST", "/gabriel/song/fetch/mpack", {"want": [history.tip]}, status=200))
    blob = b"fuzz blob"
    nxt = history.commit({"fuzz.txt": blob})
    return {
        "owner": owner[1], "stranger": stranger[1], "admin": hub.settings.admin_token,
        "tip": history.commits[-2]["commit_id"], "parent": history.commits[0]["commit_id"],
        "blob": blob, "blob_id": nxt and history.blob(blob), "bundle": history.bundle([nxt], with_objects=False),
        "mpack_path": answer["mpack_url"].removeprefix("http://hub.test"),
    }


def test_fuzzed_requests_never_get_a_5xx_a_traceback_or_a_partial_change(hub, world, caplog, monkeypatch):
    refuse_nul_like_postgresql(hub.db, monkeypatch)
    app = create_app(hub)
    rng = random.Random(SEED)
    fuzzer = Fuzzer(rng, world)
    caplog.set_level(logging.WARNING)
    before = state(hub)
    deadline = time.monotonic() + SECONDS
    cases = 0
    while time.monotonic() < deadline:
        method, template, kind = rng.choice(ROUTES)
        if rng.random() < 0.05:
            method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
        path = fuzzer.path(template)
        path, _, query = path.partition("?")
        if template == "{mpack}" and rng.random() < 0.3:
            query = "&".join(part if rng.random() < 0.7 else part[: rng.randrange(len(part) + 1)] + rng.choice(
                ["0", "%00", "=", "&", "9" * 40]) for part in query.split("&"))
        body = valid_body(kind, world) if kind is not None or rng.random() < 0.2 else None
        raw, content_type = b"", None
        if body is not None and method not in ("GET", "HEAD") or rng.random() < 0.05:
            raw, content_type = fuzzer.encode(fuzzer.mutate(body) if rng.random() < 0.85 else body)
        described = f"case {cases} (seed {SEED}): {method} {path}?{query} {content_type} {raw[:200]!r}"
        status, headers, reply = call(app, method, path, query, raw, content_type, fuzzer.headers())
        cases += 1
        assert status < 500, f"{described} → {status} {reply[:300]!r}"
        if status >= 400 and method != "HEAD":
            assert set(json.loads(reply)) == {"error", "detail"}, described
        tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
        assert not tracebacks, f"{described} logged {tracebacks[0].getMessage()}"
        after = state(hub)
        if status >= 400:
            assert after == before, f"{described} → {status} changed the hub's state"
        before = after
    assert cases > 200, f"only {cases} cases in {SECONDS} s"

