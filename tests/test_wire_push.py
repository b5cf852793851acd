"""The write half of the Muse wire protocol: refs, filter-objects, presign, push/objects, push.

Calls go through the real app as the Muse CLI makes them (msgpack both ways,
see PROTOCOL.md). A rejected push changes nothing: no branch moves, no row is
added, and a bad object chunk leaves no file in the store.
"""
from __future__ import annotations

import base64
import io
import json
from wsgiref.util import setup_testing_defaults

import msgpack
import pytest
import webtest

from mpack.format import ids
from mpack.hub.models import BackgroundJob, Branch, Commit, Object, Repo, Snapshot
from mpack.hub.settings import Settings
from storage import BLOBS
from tests.database import database_url
from tests.factories import History, error_of, make_repo, push_history, unpack, wire

MSGPACK = "application/x-msgpack"
JSON = "application/json"
SONG = "/gabriel/song"
SECRET = "/gabriel/secret"
EMPTY_BLOB = ids.object_digest(b"")


# -- helpers ----------------------------------------------------------------------

def call(app, path: str, raw: bytes, *, token: str | None = None, content_type: str = MSGPACK,
         accept: str = f"{MSGPACK}, {JSON}", environ: dict | None = None):
    """A POST with exactly these body bytes (for bodies ``wire()`` cannot build)."""
    request = webtest.TestRequest.blank(path, method="POST", body=raw, headers={"Content-Type": content_type})
    if accept:
        request.headers["Accept"] = accept
    if token:
        request.headers["Authorization"] = f"Bearer {token}"
    request.environ.update(environ or {})
    if request.environ.get("CONTENT_LENGTH") is None:
        request.environ.pop("CONTENT_LENGTH", None)
    return app.do_request(request, status="*", expect_errors=True)




def assert_unauthorized(response) -> None:
    error_of(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def state(hub, repo) -> dict:
    """Everything a push may change, to compare before and after a rejected one."""
    row = Repo.get_by_id(repo.repo_id)
    return {
        "default_branch": row.default_branch,
        "branches": {b.name: b.head_commit_id for b in Branch.select().where(Branch.repo == row)},
        "commits": Commit.select().where(Commit.repo == row).count(),
        "snapshots": Snapshot.select().where(Snapshot.repo == row).count(),
        "objects": Object.select().where(Object.repo == row).count(),
        "jobs": BackgroundJob.select().count(),
        "stored_blobs": sorted(hub.store.iter_digests(BLOBS)),
    }


def heads(app, path: str = SONG, token: str | None = None) -> dict:
    return unpack(wire(app, "GET", f"{path}/refs", token=token, status=200))["branch_heads"]


def push_body(history: History, *, branch: str = "main", force: bool = False, commits=None,
              with_objects: bool = True) -> dict:
    return {"bundle": history.bundle(commits, with_objects=with_objects), "branch": branch, "force": force}


def objects_of(history: History) -> list[dict]:
    return [{"object_id": o, "content": c} for o, c in sorted(history.blobs.items())]


def valid_body(route: str, history: History) -> dict:
    """A body each POST route accepts for ``history`` (pushed or not)."""
    return {
        "filter-objects": lambda: {"object_ids": sorted(history.blobs)},
        "presign": lambda: {"object_ids": sorted(history.blobs), "direction": "put"},
        "push/objects": lambda: {"objects": objects_of(history)},
        "push": lambda: push_body(history),
        "fetch": lambda: {"want": [history.tip], "have": []},
        "negotiate": lambda: {"want": [history.tip], "have": []},
        "fetch/mpack": lambda: {"want": [history.tip]},
    }[route]()


WRITE_ROUTES = ["filter-objects", "presign", "push/objects", "push"]
READ_ROUTES = ["fetch", "negotiate", "fetch/mpack"]
POST_ROUTES = WRITE_ROUTES + READ_ROUTES

MALFORMED = [
    pytest.param(b"\xc1", MSGPACK, id="msgpack-reserved-byte"),
    pytest.param(b"\x81\xaaobject_ids", MSGPACK, id="msgpack-truncated"),
    pytest.param(msgpack.packb({"object_ids": []}) + b"\xc0", MSGPACK, id="msgpack-extra-data"),
    pytest.param(msgpack.packb({1: []}), MSGPACK, id="msgpack-int-key"),
    pytest.param(b"{\"object_ids\": [", JSON, id="json-truncated"),
    pytest.param(b"[" * 10_000, JSON, id="json-nested-too-deep"),
    pytest.param(b"", MSGPACK, id="empty"),
]
NOT_A_MAP = [
    pytest.param(msgpack.packb([]), MSGPACK, id="msgpack-list"),
    pytest.param(msgpack.packb("object_ids"), MSGPACK, id="msgpack-str"),
    pytest.param(msgpack.packb(None), MSGPACK, id="msgpack-nil"),
    pytest.param(msgpack.packb(b"\x80"), MSGPACK, id="msgpack-bin"),
    pytest.param(b"[1, 2]", JSON, id="json-list"),
    pytest.param(b"42", JSON, id="json-number"),
]
MALFORMED_IDS = [
    pytest.param("abc", id="short"),
    pytest.param("A" * 64, id="uppercase"),
    pytest.param("g" * 64, id="not-hex"),
    pytest.param("a" * 65, id="long"),
    pytest.param("sha1:" + "a" * 64, id="wrong-prefix"),
    pytest.param("sha256:" + "a" * 63, id="prefix-short"),
    pytest.param(7, id="int"),
    pytest.param(None, id="nil"),
    pytest.param(b"a" * 64, id="bin"),
]


@pytest.fixture
def history() -> History:
    return History().linear(2)


@pytest.fixture
def token(owner) -> str:
    return owner[1]


# -- every POST route ---------------------------------------------------------------

@pytest.mark.parametrize("route", WRITE_ROUTES)
def test_a_write_route_succeeds_for_the_owner(app, token, repo, history, route):
    response = wire(app, "POST", f"{SONG}/{route}", valid_body(route, history), token=token)
    assert response.status_int == 200, response.body
    assert response.content_type == MSGPACK


@pytest.mark.parametrize("route", WRITE_ROUTES)
def test_a_write_route_answers_json_when_accept_does_not_name_msgpack(app, token, repo, history, route):
    raw = msgpack.packb(valid_body(route, history), use_bin_type=True)
    response = call(app, f"{SONG}/{route}", raw, token=token, accept=JSON)
    assert response.status_int == 200, response.body
    assert response.content_type == JSON
    assert isinstance(json.loads(response.body), dict)


@pytest.mark.parametrize("route", WRITE_ROUTES)
def test_a_write_route_answers_json_when_there_is_no_accept(app, token, repo, history, route):
    raw = msgpack.packb(valid_body(route, history), use_bin_type=True)
    response = call(app, f"{SONG}/{route}", raw, token=token, accept="")
    assert response.content_type == JSON


@pytest.mark.parametrize("route", POST_ROUTES)
def test_a_post_route_refuses_get_with_a_json_405(app, token, repo, route):
    response = wire(app, "GET", f"{SONG}/{route}", token=token, status="*")
    assert error_of(response, 405)["error"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize("raw, content_type", MALFORMED)
def test_a_post_route_refuses_a_malformed_body_with_400(app, token, repo, route, raw, content_type):
    body = error_of(call(app, f"{SONG}/{route}", raw, token=token, content_type=content_type), 400)
    assert body["error"] == "malformed_body"


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize("raw, content_type", NOT_A_MAP)
def test_a_post_route_refuses_a_body_that_is_not_a_map_with_400(app, token, repo, route, raw, content_type):
    error_of(call(app, f"{SONG}/{route}", raw, token=token, content_type=content_type), 400)


@pytest.mark.parametrize("route", POST_ROUTES)
def test_a_post_route_on_an_unknown_repo_is_404(app, token, history, route):
    response = wire(app, "POST", f"/gabriel/nothing/{route}", valid_body(route, history), token=token)
    assert error_of(response, 404)["error"] == "repo_not_found"


@pytest.mark.parametrize("route", WRITE_ROUTES)
def test_a_write_route_without_a_token_is_401(app, repo, history, route):
    assert_unauthorized(wire(app, "POST", f"{SONG}/{route}", valid_body(route, history)))


@pytest.mark.parametrize("route", POST_ROUTES + ["refs"])
def test_any_route_with_an_unknown_token_is_401(app, repo, history, route):
    method = "GET" if route == "refs" else "POST"
    body = None if route == "refs" else valid_body(route, history)
    assert_unauthorized(wire(app, method, f"{SONG}/{route}", body, token="mph_unknown", status="*"))


@pytest.mark.parametrize("route", WRITE_ROUTES)
def test_a_write_route_with_a_non_owner_token_is_403_on_a_public_repo(app, stranger, repo, history, route):
    response = wire(app, "POST", f"{SONG}/{route}", valid_body(route, history), token=stranger[1])
    assert error_of(response, 403)["error"] == "forbidden"


def test_a_rejected_non_owner_push_changes_nothing(app, hub, stranger, repo, history):
    before = state(hub, repo)
    error_of(wire(app, "POST", f"{SONG}/push", push_body(history), token=stranger[1]), 403)
    error_of(wire(app, "POST", f"{SONG}/push/objects", {"objects": objects_of(history)}, token=stranger[1]), 403)
    assert state(hub, repo) == before


@pytest.mark.parametrize("route", READ_ROUTES)
@pytest.mark.parametrize("field, value", [("want", "a" * 64), ("want", {"a": 1}), ("want", 5), ("want", [5]),
                                          ("have", "a" * 64), ("have", None), ("have", [None])])
def test_a_read_route_refuses_want_or_have_of_the_wrong_type(app, repo, history, route, field, value):
    body = {"want": [history.tip], "have": [], field: value}
    assert error_of(wire(app, "POST", f"{SONG}/{route}", body), 400)["error"] == "invalid_field"


# -- private repositories are invisible -------------------------------------------

@pytest.fixture
def pushed_secret(app, token, private_repo) -> History:
    history = History().linear(2)
    push_history(app, token, SECRET, history)
    return history


@pytest.mark.parametrize("route", ["refs"] + POST_ROUTES)
def test_the_owner_reaches_every_route_of_a_private_repo(app, token, pushed_secret, route):
    method = "GET" if route == "refs" else "POST"
    body = None if route == "refs" else valid_body(route, pushed_secret)
    assert wire(app, method, f"{SECRET}/{route}", body, token=token, status="*").status_int == 200


@pytest.mark.parametrize("who", ["stranger", "anonymous"])
@pytest.mark.parametrize("route", ["refs"] + POST_ROUTES)
def test_a_private_repo_is_404_on_every_route(app, stranger, pushed_secret, route, who):
    method = "GET" if route == "refs" else "POST"
    body = None if route == "refs" else valid_body(route, pushed_secret)
    caller = stranger[1] if who == "stranger" else None
    hidden = error_of(wire(app, method, f"{SECRET}/{route}", body, token=caller, status="*"), 404)
    missing = error_of(wire(app, method, f"/gabriel/nothing/{route}", body, token=caller, status="*"), 404)
    assert hidden["error"] == missing["error"] == "repo_not_found"


@pytest.mark.parametrize("who", ["stranger", "anonymous"])
def test_a_private_repo_is_404_through_the_repo_api(app, stranger, pushed_secret, who):
    headers = {"Authorization": f"Bearer {stranger[1]}"} if who == "stranger" else {}
    error_of(app.get("/api/repos/gabriel/secret", headers=headers, expect_errors=True), 404)


# -- body limits ------------------------------------------------------------------

class TestBodyLimit:
    """A hub built with ``max_body_bytes=4096``."""

    LIMIT = 4096

    @pytest.fixture
    def settings(self, tmp_path) -> Settings:
        return Settings.for_home(tmp_path / "hub",
                                 database_url=database_url(tmp_path / "hub"), public_url="http://hub.test", job_threads=0,
                                 max_body_bytes=self.LIMIT)

    @pytest.mark.parametrize("route", POST_ROUTES)
    def test_a_body_over_the_limit_is_413(self, app, token, repo, route):
        response = wire(app, "POST", f"{SONG}/{route}", {"pad": b"x" * (2 * self.LIMIT)}, token=token)
        assert error_of(response, 413)["error"] == "body_too_large"

    def test_a_push_under_the_limit_is_applied(self, app, token, repo, history):
        assert unpack(push_history(app, token, SONG, history))["ok"] is True

    def test_a_chunked_body_over_the_limit_is_413(self, app, token, repo):
        raw = msgpack.packb({"objects": [], "pad": b"x" * (2 * self.LIMIT)})
        response = call(app, f"{SONG}/push/objects", raw, token=token,
                        environ={"CONTENT_LENGTH": None, "wsgi.input_terminated": True})
        error_of(response, 413)

    def test_a_chunked_body_under_the_limit_is_read(self, app, token, repo, history):
        raw = msgpack.packb({"objects": objects_of(history)}, use_bin_type=True)
        response = call(app, f"{SONG}/push/objects", raw, token=token,
                        environ={"CONTENT_LENGTH": None, "wsgi.input_terminated": True})
        assert unpack(response) == {"stored": 2, "skipped": 0}

    def test_a_content_length_over_the_limit_is_413_before_reading(self, app, token, repo):
        response = call(app, f"{SONG}/filter-objects", msgpack.packb({"object_ids": []}), token=token,
                        environ={"CONTENT_LENGTH": str(10 * self.LIMIT)})
        error_of(response, 413)

    def test_a_content_length_shorter_than_the_body_reads_only_that_much(self, app, token, repo):
        raw = msgpack.packb({"object_ids": [], "pad": b"x" * (2 * self.LIMIT)})
        response = call(app, f"{SONG}/filter-objects", raw, token=token, environ={"CONTENT_LENGTH": "20"})
        assert error_of(response, 400)["error"] == "malformed_body"


def test_a_content_length_that_is_not_a_number_is_400(app, token, repo):
    """webtest refuses to send this header, so the WSGI app is called directly."""
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": f"{SONG}/filter-objects", "CONTENT_LENGTH": "12abc",
               "CONTENT_TYPE": MSGPACK, "HTTP_AUTHORIZATION": f"Bearer {token}",
               "wsgi.input": io.BytesIO(msgpack.packb({"object_ids": []}))}
    setup_testing_defaults(environ)
    started = {}
    body = b"".join(app.app(environ, lambda status, headers, exc_info=None: started.update(status=status)))
    assert started["status"].startswith("400")
    assert set(json.loads(body)) == {"error", "detail"}


# -- GET /refs ---------------------------------------------------------------------

def test_refs_of_an_empty_repo(app, repo):
    refs = unpack(wire(app, "GET", f"{SONG}/refs", status=200))
    assert refs == {"repo_id": repo.repo_id, "domain": "code", "default_branch": "main", "branch_heads": {}}


def test_refs_after_a_push_names_the_branch_head(app, token, repo, history):
    push_history(app, token, SONG, history)
    assert heads(app) == {"main": history.tip}


def test_refs_of_a_public_repo_need_no_token(app, repo):
    assert wire(app, "GET", f"{SONG}/refs").status_int == 200


def test_refs_of_a_public_repo_are_open_to_a_non_owner(app, stranger, repo):
    assert wire(app, "GET", f"{SONG}/refs", token=stranger[1]).status_int == 200


def test_refs_answer_json_when_accept_does_not_name_msgpack(app, repo):
    response = app.get(f"{SONG}/refs", headers={"Accept": JSON})
    assert response.content_type == JSON
    assert response.json["branch_heads"] == {}


def test_refs_refuse_post_with_405(app, token, repo):
    error_of(wire(app, "POST", f"{SONG}/refs", {}, token=token), 405)


def test_refs_of_an_unknown_repo_are_404(app):
    error_of(wire(app, "GET", "/gabriel/nothing/refs", status="*"), 404)


def test_refs_of_an_unknown_owner_are_404(app):
    error_of(wire(app, "GET", "/nobody/song/refs", status="*"), 404)


# -- POST /filter-objects ---------------------------------------------------------

def test_filter_objects_lists_the_ids_the_repo_lacks(app, token, repo, history):
    held, lacking = sorted(history.blobs)
    wire(app, "POST", f"{SONG}/push/objects", {"objects": [{"object_id": held, "content": history.blobs[held]}]},
         token=token, status=200)
    answer = unpack(wire(app, "POST", f"{SONG}/filter-objects", {"object_ids": [held, lacking]}, token=token))
    assert answer == {"missing": [lacking]}


def test_filter_objects_never_asks_for_the_empty_blob(app, token, repo):
    answer = unpack(wire(app, "POST", f"{SONG}/filter-objects", {"object_ids": [EMPTY_BLOB]}, token=token))
    assert answer == {"missing": []}


def test_filter_objects_keeps_the_spelling_it_was_sent(app, token, repo):
    spelled = "sha256:" + ids.object_digest(b"tune")
    answer = unpack(wire(app, "POST", f"{SONG}/filter-objects", {"object_ids": [spelled]}, token=token))
    assert answer == {"missing": [spelled]}


def test_filter_objects_counts_an_object_held_by_another_repo_as_missing(app, hub, token, repo, history):
    make_repo(hub, None, "other", "public")
    push_history(app, token, "/gabriel/other", history)
    answer = unpack(wire(app, "POST", f"{SONG}/filter-objects", {"object_ids": sorted(history.blobs)}, token=token))
    assert answer == {"missing": sorted(history.blobs)}


def test_filter_objects_of_nothing_is_nothing(app, token, repo):
    assert unpack(wire(app, "POST", f"{SONG}/filter-objects", {"object_ids": []}, token=token)) == {"missing": []}


@pytest.mark.parametrize("object_ids", ["a" * 64, {"a": 1}, None, 5, True])
def test_filter_objects_refuses_object_ids_that_are_not_a_list(app, token, repo, object_ids):
    response = wire(app, "POST", f"{SONG}/filter-objects", {"object_ids": object_ids}, token=token)
    assert error_of(response, 400)["error"] == "invalid_field"


@pytest.mark.parametrize("bad", MALFORMED_IDS)
def test_filter_objects_refuses_a_malformed_id(app, token, repo, bad):
    response = wire(app, "POST", f"{SONG}/filter-objects", {"object_ids": [EMPTY_BLOB, bad]}, token=token)
    assert error_of(response, 400)["error"] == "invalid_id"


# -- POST /presign ---------------------------------------------------------------------

def test_presign_answers_every_id_inline(app, token, repo, history):
    answer = unpack(wire(app, "POST", f"{SONG}/presign", valid_body("presign", history), token=token))
    assert answer == {"presigned": {}, "inline": sorted(history.blobs)}


def test_presign_defaults_to_put(app, token, repo, history):
    answer = unpack(wire(app, "POST", f"{SONG}/presign", {"object_ids": sorted(history.blobs)}, token=token))
    assert answer["inline"] == sorted(history.blobs)


@pytest.mark.parametrize("direction", ["PUT", "post", "", None, 1, True])
def test_presign_refuses_an_unknown_direction(app, token, repo, history, direction):
    body = {"object_ids": sorted(history.blobs), "direction": direction}
    error_of(wire(app, "POST", f"{SONG}/presign", body, token=token), 400)


@pytest.mark.parametrize("object_ids", ["a" * 64, {"a": 1}, None, 5])
def test_presign_refuses_object_ids_that_are_not_a_list(app, token, repo, object_ids):
    response = wire(app, "POST", f"{SONG}/presign", {"object_ids": object_ids, "direction": "put"}, token=token)
    assert error_of(response, 400)["error"] == "invalid_field"


@pytest.mark.parametrize("bad", MALFORMED_IDS)
def test_presign_refuses_a_malformed_id(app, token, repo, bad):
    response = wire(app, "POST", f"{SONG}/presign", {"object_ids": [bad], "direction": "put"}, token=token)
    assert error_of(response, 400)["error"] == "invalid_id"


# -- POST /push/objects -------------------------------------------------------------

def test_push_objects_stores_the_chunk(app, hub, token, repo, history):
    answer = unpack(wire(app, "POST", f"{SONG}/push/objects", {"objects": objects_of(history)}, token=token))
    assert answer == {"stored": 2, "skipped": 0}
    for object_id, content in history.blobs.items():
        with hub.store.open(BLOBS, object_id) as stored:
            assert stored.read() == content
    assert state(hub, repo)["objects"] == 2


def test_push_objects_skips_what_the_repo_already_holds(app, token, repo, history):
    wire(app, "POST", f"{SONG}/push/objects", {"objects": objects_of(history)}, token=token, status=200)
    answer = unpack(wire(app, "POST", f"{SONG}/push/objects", {"objects": objects_of(history)}, token=token))
    assert answer == {"stored": 0, "skipped": 2}


def test_push_objects_counts_a_repeated_object_once(app, token, repo, history):
    objects = objects_of(history)[:1] * 3
    assert unpack(wire(app, "POST", f"{SONG}/push/objects", {"objects": objects}, token=token)) == {
        "stored": 1, "skipped": 2}


def test_push_objects_accepts_the_prefixed_id_spelling(app, hub, token, repo):
    history = History(prefix="sha256:").linear(1)
    answer = unpack(wire(app, "POST", f"{SONG}/push/objects", {"objects": objects_of(history)}, token=token))
    assert answer == {"stored": 1, "skipped": 0}


def test_push_objects_accepts_json_with_base64_content(app, token, repo, history):
    objects = [{"object_id": o["object_id"], "content": base64.b64encode(o["content"]).decode()}
               for o in objects_of(history)]
    raw = json.dumps({"objects": objects}).encode()
    response = call(app, f"{SONG}/push/objects", raw, token=token, content_type=JSON, accept=JSON)
    assert response.json == {"stored": 2, "skipped": 0}


def test_push_objects_with_a_lying_object_stores_nothing_of_the_chunk(app, hub, token, repo, history):
    good = objects_of(history)
    liar = {"object_id": ids.object_digest(b"what I claim"), "content": b"what I send"}
    before = state(hub, repo)
    response = wire(app, "POST", f"{SONG}/push/objects", {"objects": [good[0], liar, good[1]]}, token=token)
    assert error_of(response, 422)["error"] == "id_mismatch"
    assert state(hub, repo) == before
    for digest in [*(ids.hex_of(o["object_id"]) for o in good), liar["object_id"], ids.object_digest(b"what I send")]:
        assert not hub.store.exists(BLOBS, digest)


def test_push_objects_refuses_a_chunk_of_more_than_1000_objects(app, hub, token, repo):
    objects = [{"object_id": ids.object_digest(b"%d" % n), "content": b"%d" % n} for n in range(1001)]
    before = state(hub, repo)
    response = wire(app, "POST", f"{SONG}/push/objects", {"objects": objects}, token=token)
    assert error_of(response, 400)["error"] == "bad_request"
    assert state(hub, repo) == before


def test_push_objects_counts_a_chunk_before_verifying_it(app, token, repo):
    objects = [{"object_id": ids.object_digest(b"claimed"), "content": b"%d" % n} for n in range(1001)]
    assert error_of(wire(app, "POST", f"{SONG}/push/objects", {"objects": objects}, token=token), 400)


def test_push_objects_takes_a_chunk_of_1000_objects(app, token, repo):
    objects = [{"object_id": ids.object_digest(b"%d" % n), "content": b"%d" % n} for n in range(1000)]
    assert unpack(wire(app, "POST", f"{SONG}/push/objects", {"objects": objects}, token=token))["stored"] == 1000


@pytest.mark.parametrize("objects", ["x", {"object_id": EMPTY_BLOB}, 5, True])
def test_push_objects_refuses_objects_that_are_not_a_list(app, token, repo, objects):
    response = wire(app, "POST", f"{SONG}/push/objects", {"objects": objects}, token=token)
    assert error_of(response, 400)["error"] == "invalid_field"


@pytest.mark.parametrize("item", [EMPTY_BLOB, [EMPTY_BLOB, b""], None, 3])
def test_push_objects_refuses_an_object_that_is_not_a_map(app, token, repo, item):
    error_of(wire(app, "POST", f"{SONG}/push/objects", {"objects": [item]}, token=token), 400)


@pytest.mark.parametrize("content", [None, 5, ["a"], {"a": b"a"}, "not base64!"])
def test_push_objects_refuses_content_of_the_wrong_type(app, token, repo, content):
    body = {"objects": [{"object_id": ids.object_digest(b"a"), "content": content}]}
    assert error_of(wire(app, "POST", f"{SONG}/push/objects", body, token=token), 400)["error"] == "invalid_field"


@pytest.mark.parametrize("bad", MALFORMED_IDS)
def test_push_objects_refuses_a_malformed_object_id(app, token, repo, bad):
    body = {"objects": [{"object_id": bad, "content": b"a"}]}
    assert error_of(wire(app, "POST", f"{SONG}/push/objects", body, token=token), 400)["error"] == "invalid_id"


# -- POST /push: applying -----------------------------------------------------------

def test_a_first_push_creates_the_branch_and_makes_it_the_default(app, token, repo, history):
    answer = unpack(push_history(app, token, SONG, history, branch="trunk"))
    assert answer["ok"] is True
    assert answer["branch_heads"] == {"trunk": history.tip}
    refs = unpack(wire(app, "GET", f"{SONG}/refs"))
    assert refs["default_branch"] == "trunk"
    assert refs["branch_heads"] == {"trunk": history.tip}


def test_push_answers_a_real_msgpack_true(app, token, repo, history):
    response = push_history(app, token, SONG, history)
    assert response.content_type == MSGPACK
    assert b"\xa2ok\xc3" in response.body  # "ok": true, not the integer 1
    assert unpack(response)["ok"] is True


def test_push_answers_json_when_accept_does_not_name_msgpack(app, token, repo, history):
    raw = msgpack.packb(push_body(history), use_bin_type=True)
    response = call(app, f"{SONG}/push", raw, token=token, accept=JSON)
    assert response.content_type == JSON
    assert response.json["ok"] is True


def test_push_stores_every_commit_snapshot_and_object(app, hub, token, repo, history):
    push_history(app, token, SONG, history)
    counts = state(hub, repo)
    assert (counts["commits"], counts["snapshots"], counts["objects"]) == (2, 2, 2)


def test_push_with_objects_inside_the_bundle(app, hub, token, repo, history):
    assert unpack(wire(app, "POST", f"{SONG}/push", push_body(history), token=token))["ok"] is True
    for object_id, content in history.blobs.items():
        with hub.store.open(BLOBS, object_id) as stored:
            assert stored.read() == content


def test_pushing_the_same_history_twice_is_idempotent(app, hub, token, repo, history):
    first = unpack(push_history(app, token, SONG, history))
    after_first = state(hub, repo)
    second = unpack(push_history(app, token, SONG, history))
    assert second["ok"] is True
    assert second["branch_heads"] == first["branch_heads"]
    assert state(hub, repo) == after_first


def test_a_fast_forward_push_moves_the_branch(app, token, repo, history):
    push_history(app, token, SONG, history)
    newer = history.commit()
    answer = unpack(push_history(app, token, SONG, history, commits=[newer]))
    assert answer["branch_heads"] == {"main": newer["commit_id"]}


def test_a_merge_commit_fast_forwards(app, token, repo, history):
    base = history.tip
    push_history(app, token, SONG, history)
    left = history.commit({"left.txt": b"left"}, parents=[base])
    right = history.commit({"right.txt": b"right"}, parents=[base])
    merge = history.commit({"left.txt": b"left"}, parents=[left["commit_id"], right["commit_id"]])
    answer = unpack(push_history(app, token, SONG, history, commits=[left, right, merge]))
    assert answer["branch_heads"] == {"main": merge["commit_id"]}


def test_a_non_fast_forward_push_is_409_and_leaves_the_head(app, hub, token, repo, history):
    base = history.commits[0]["commit_id"]
    push_history(app, token, SONG, history)
    rival = history.commit({"rival.txt": b"rival"}, parents=[base])
    response = push_history(app, token, SONG, history, commits=[rival], status=409)
    assert error_of(response, 409)["error"] == "non_fast_forward"
    assert heads(app) == {"main": history.commits[1]["commit_id"]}


def test_pushing_an_older_commit_without_force_is_409(app, token, repo, history):
    push_history(app, token, SONG, history)
    old = history.commits[0]
    response = wire(app, "POST", f"{SONG}/push", push_body(history, commits=[old]), token=token)
    error_of(response, 409)
    assert heads(app) == {"main": history.tip}


def test_a_forced_non_fast_forward_push_moves_the_head(app, token, repo, history):
    base = history.commits[0]["commit_id"]
    push_history(app, token, SONG, history)
    rival = history.commit({"rival.txt": b"rival"}, parents=[base])
    answer = unpack(push_history(app, token, SONG, history, commits=[rival], force=True))
    assert answer["ok"] is True
    assert heads(app) == {"main": rival["commit_id"]}


def test_a_repo_with_two_branches(app, token, repo, history):
    push_history(app, token, SONG, history, branch="main")
    feature = history.commit({"feature.txt": b"feature"})
    push_history(app, token, SONG, history, branch="feature/drums", commits=[feature])
    refs = unpack(wire(app, "GET", f"{SONG}/refs"))
    assert refs["branch_heads"] == {"main": history.commits[1]["commit_id"], "feature/drums": feature["commit_id"]}
    assert refs["default_branch"] == "main"


def test_a_push_of_the_prefixed_spelling_keeps_it(app, token, repo):
    history = History(prefix="sha256:").linear(3)
    answer = unpack(push_history(app, token, SONG, history))
    assert answer["branch_heads"] == {"main": history.tip}
    assert history.tip.startswith("sha256:")
    assert heads(app) == {"main": history.tip}


def test_a_push_may_point_a_new_branch_at_a_known_head(app, token, repo, history):
    push_history(app, token, SONG, history)
    body = {"bundle": {"commits": [], "snapshots": [], "objects": []}, "branch": "release", "head": history.tip}
    answer = unpack(wire(app, "POST", f"{SONG}/push", body, token=token))
    assert answer["branch_heads"] == {"main": history.tip, "release": history.tip}


def test_a_push_with_nothing_in_it_is_400(app, token, repo):
    body = {"bundle": {"commits": [], "snapshots": [], "objects": []}, "branch": "main"}
    error_of(wire(app, "POST", f"{SONG}/push", body, token=token), 400)


def test_the_empty_blob_need_not_be_uploaded(app, token, repo):
    history = History()
    history.commit({"empty.txt": b"", "full.txt": b"full"})
    answer = unpack(push_history(app, token, SONG, history))
    assert answer["ok"] is True


def test_a_push_may_reference_objects_the_repo_already_holds(app, token, repo, history):
    push_history(app, token, SONG, history)
    again = history.commit({"file0.txt": b"content 0\n"}, message="touch")
    body = push_body(history, commits=[again], with_objects=False)
    assert unpack(wire(app, "POST", f"{SONG}/push", body, token=token))["ok"] is True


def test_a_successful_push_enqueues_one_prebuild(app, hub, token, repo, history):
    push_history(app, token, SONG, history)
    assert [j.job_type for j in BackgroundJob.select()] == ["fetch.mpack.prebuild"]


def test_negotiate_answers_real_msgpack_booleans(app, token, repo, history):
    push_history(app, token, SONG, history)
    known = unpack(wire(app, "POST", f"{SONG}/negotiate", {"want": [], "have": [history.tip]}))
    unknown = unpack(wire(app, "POST", f"{SONG}/negotiate", {"want": [], "have": ["a" * 64]}))
    assert known["ready"] is True and unknown["ready"] is False


# -- POST /push: refusing -----------------------------------------------------------

def lie_about_object(body: dict, history: History) -> None:
    body["bundle"]["objects"][0]["content"] = b"not what the id says"


def lie_about_snapshot(body: dict, history: History) -> None:
    body["bundle"]["snapshots"][0]["manifest"]["sneaky.txt"] = ids.object_digest(b"x")


def lie_about_commit(body: dict, history: History) -> None:
    body["bundle"]["commits"][0]["message"] = "rewritten"


@pytest.mark.parametrize("lie", [lie_about_object, lie_about_snapshot, lie_about_commit])
def test_a_push_whose_ids_do_not_match_their_content_is_422_and_changes_nothing(app, hub, token, repo, lie):
    first = History().linear(1)
    push_history(app, token, SONG, first)
    newer = first.commit({"new.txt": b"new"})
    body = push_body(first, commits=[newer])
    lie(body, first)
    before = state(hub, repo)
    assert error_of(wire(app, "POST", f"{SONG}/push", body, token=token), 422)["error"] == "id_mismatch"
    assert state(hub, repo) == before


def test_a_first_push_whose_commit_lies_creates_no_branch(app, hub, token, repo, history):
    body = push_body(history)
    lie_about_commit(body, history)
    before = state(hub, repo)
    error_of(wire(app, "POST", f"{SONG}/push", body, token=token), 422)
    assert state(hub, repo) == before
    assert before["branches"] == {} and before["default_branch"] is None


def test_a_commit_whose_parent_is_neither_pushed_nor_held_is_422(app, hub, token, repo, history):
    body = push_body(history, commits=history.commits[1:])
    before = state(hub, repo)
    response = wire(app, "POST", f"{SONG}/push", body, token=token)
    assert error_of(response, 422)["error"] == "missing_reference"
    assert "parent" in response.json["detail"]
    assert state(hub, repo) == before


def test_a_commit_whose_snapshot_is_neither_pushed_nor_held_is_422(app, hub, token, repo, history):
    body = push_body(history)
    body["bundle"]["snapshots"] = body["bundle"]["snapshots"][1:]
    before = state(hub, repo)
    response = wire(app, "POST", f"{SONG}/push", body, token=token)
    assert error_of(response, 422)["error"] == "missing_reference"
    assert "snapshot" in response.json["detail"]
    assert state(hub, repo) == before


def test_a_snapshot_whose_object_is_neither_pushed_nor_held_is_422(app, hub, token, repo, history):
    body = push_body(history)
    body["bundle"]["objects"] = body["bundle"]["objects"][1:]
    before = state(hub, repo)
    response = wire(app, "POST", f"{SONG}/push", body, token=token)
    assert error_of(response, 422)["error"] == "missing_reference"
    assert "objects" in response.json["detail"]
    assert state(hub, repo) == before


def test_an_object_held_only_by_another_repo_counts_as_missing(app, hub, token, repo, history):
    make_repo(hub, None, "other", "public")
    push_history(app, token, "/gabriel/other", history)
    body = push_body(history, with_objects=False)
    error_of(wire(app, "POST", f"{SONG}/push", body, token=token), 422)


def test_pushing_a_head_the_repo_does_not_hold_is_422(app, token, repo):
    body = {"bundle": {"commits": [], "snapshots": [], "objects": []}, "branch": "main", "head": "a" * 64}
    error_of(wire(app, "POST", f"{SONG}/push", body, token=token), 422)


@pytest.mark.parametrize("branch", ["../x", "a/../b", "-x", "/x", "a\\b", "a\0b", "", ".", "x/", "a//b",
                                    "x.lock", "tab\tname", "x" * 256])
def test_a_branch_name_that_could_escape_a_path_is_422(app, hub, token, repo, history, branch):
    before = state(hub, repo)
    response = wire(app, "POST", f"{SONG}/push", push_body(history, branch=branch), token=token)
    assert error_of(response, 422)["error"] == "invalid_record"
    assert state(hub, repo) == before


@pytest.mark.parametrize("branch", [None, 5, ["main"], {"main": 1}, True, b"main"])
def test_a_branch_that_is_not_a_string_is_422(app, token, repo, history, branch):
    body = error_of(wire(app, "POST", f"{SONG}/push", push_body(history, branch=branch), token=token), 422)
    assert body["error"] == "invalid_record" and body["detail"].startswith("branch:")


@pytest.mark.parametrize("force", ["true", 1, 0, None, [True]])
def test_force_that_is_not_a_boolean_is_400(app, token, repo, history, force):
    body = push_body(history)
    body["force"] = force
    assert error_of(wire(app, "POST", f"{SONG}/push", body, token=token), 400)["error"] == "invalid_field"


@pytest.mark.parametrize("bundle", [None, [], "bundle", 5])
def test_a_bundle_that_is_not_a_map_is_400(app, token, repo, bundle):
    body = {"bundle": bundle, "branch": "main", "force": False}
    assert error_of(wire(app, "POST", f"{SONG}/push", body, token=token), 400)["error"] == "invalid_field"


@pytest.mark.parametrize("key", ["commits", "snapshots", "objects"])
@pytest.mark.parametrize("value", ["x", {"a": 1}, 5])
def test_bundle_lists_that_are_not_lists_are_400(app, token, repo, history, key, value):
    body = push_body(history)
    body["bundle"][key] = value
    assert error_of(wire(app, "POST", f"{SONG}/push", body, token=token), 400)["error"] == "invalid_field"


@pytest.mark.parametrize("key", ["commits", "snapshots", "objects"])
def test_a_bundle_record_that_is_not_a_map_is_400(app, token, repo, history, key):
    body = push_body(history)
    body["bundle"][key] = ["not a record"]
    error_of(wire(app, "POST", f"{SONG}/push", body, token=token), 400)


@pytest.mark.parametrize("field, value", [
    ("message", None), ("message", 5), ("committed_at", None), ("committed_at", 1.5),
    ("commit_id", "abc"), ("commit_id", None), ("snapshot_id", 5), ("parent_commit_id", "nope"),
    ("parent2_commit_id", 7),
])
def test_a_commit_with_a_field_of_the_wrong_type_is_422_naming_it(app, token, repo, history, field, value):
    body = push_body(history)
    body["bundle"]["commits"][0][field] = value
    error = error_of(wire(app, "POST", f"{SONG}/push", body, token=token), 422)
    assert error["error"] == "invalid_record" and error["detail"].startswith(f"bundle.commits[0].{field}:")


@pytest.mark.parametrize("field, value", [
    ("snapshot_id", "abc"), ("snapshot_id", None), ("manifest", None), ("manifest", ["a"]),
    ("manifest", {"a.txt": "not an id"}), ("manifest", {"a.txt": 5}), ("manifest", {"": EMPTY_BLOB}),
])
def test_a_snapshot_with_a_field_of_the_wrong_type_is_422_naming_it(app, token, repo, history, field, value):
    body = push_body(history)
    body["bundle"]["snapshots"][0][field] = value
    error = error_of(wire(app, "POST", f"{SONG}/push", body, token=token), 422)
    assert error["error"] == "invalid_record" and error["detail"].startswith(f"bundle.snapshots[0].{field}")


def test_a_manifest_path_that_is_bytes_is_refused(app, token, repo, history):
    body = push_body(history)
    body["bundle"]["snapshots"][0]["manifest"] = {b"a.txt": EMPTY_BLOB}
    assert error_of(wire(app, "POST", f"{SONG}/push", body, token=token), 422)["error"] == "invalid_record"


@pytest.mark.parametrize("bad", MALFORMED_IDS)
def test_a_pushed_object_with_a_malformed_id_is_400(app, token, repo, history, bad):
    body = push_body(history)
    body["bundle"]["objects"][0]["object_id"] = bad
    assert error_of(wire(app, "POST", f"{SONG}/push", body, token=token), 400)["error"] == "invalid_id"


def test_push_objects_hashes_each_blob_once(app, hub, token, repo, monkeypatch):
    """Issue 8 item 5: the content of each pushed blob goes through SHA-256 once (in the store's check)."""
    import hashlib
    contents = [b"blob number %d\n" % n * 50 for n in range(20)]
    objects = [{"object_id": ids.object_digest(c), "content": c} for c in contents]
    real = hashlib.sha256
    hashed = []

    class Counting:
        def __init__(self, data=b"", **kwargs):
            self._hash = real(**kwargs)
            self.update(data)

        def update(self, data):
            if bytes(data) in contents:
                hashed.append(bytes(data))
            self._hash.update(data)

        def __getattr__(self, name):
            return getattr(self._hash, name)

    def counting(data=b"", **kwargs):
        return Counting(data, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", counting)
    answer = unpack(wire(app, "POST", f"{SONG}/push/objects", {"objects": objects}, token=token))
    monkeypatch.undo()
    assert answer == {"stored": 20, "skipped": 0}
    assert sorted(hashed) == sorted(contents)  # each once, none twice
    assert all(hub.store.exists(BLOBS, o["object_id"]) for o in objects)
