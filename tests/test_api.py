"""The plain HTTP API: /healthz, /admin/users, /api/repos, and how calls authenticate.

Every error is JSON ``{"error", "detail"}`` without a traceback; answers are
msgpack when ``Accept`` names it and JSON otherwise.
"""
from __future__ import annotations

import json

import msgpack
import pytest

from mpack.hub.settings import Settings
from tests.database import database_url
from tests.factories import make_repo

MSGPACK = "application/x-msgpack"
JSON = "application/json"


def headers(token: str | None = None, *, content_type: str = JSON, accept: str | None = None) -> dict:
    out = {"Content-Type": content_type}
    if token is not None:
        out["Authorization"] = f"Bearer {token}"
    if accept is not None:
        out["Accept"] = accept
    return out


def post(app, path: str, body: object = None, *, raw: bytes | None = None, token: str | None = None,
         content_type: str = JSON, accept: str | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    return app.post(path, params=data, headers=headers(token, content_type=content_type, accept=accept),
                    expect_errors=True)


def error_of(response, status: int) -> dict:
    """Assert an error answer: the status, a JSON ``{"error", "detail"}`` body, no traceback."""
    assert response.status_int == status, response.body
    assert response.content_type == JSON
    body = json.loads(response.body)
    assert set(body) == {"error", "detail"}
    assert isinstance(body["error"], str) and isinstance(body["detail"], str)
    assert "Traceback" not in response.text
    return body


def assert_unauthorized(response) -> None:
    error_of(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


MALFORMED_BODIES = [
    pytest.param(b"{not json", JSON, id="malformed-json"),
    pytest.param(b"[" * 10_000, JSON, id="json-nested-too-deep"),
    pytest.param(b"\xff\xfe", JSON, id="json-not-utf8"),
    pytest.param(b"\xc1", MSGPACK, id="msgpack-reserved-byte"),
    pytest.param(b"\x82\xa4name", MSGPACK, id="msgpack-truncated"),
    pytest.param(msgpack.packb({"name": "x"}) + b"\x01", MSGPACK, id="msgpack-extra-data"),
    pytest.param(b"", JSON, id="empty"),
    pytest.param(b"[]", JSON, id="json-list"),
    pytest.param(b'"name"', JSON, id="json-string"),
    pytest.param(msgpack.packb(["name"]), MSGPACK, id="msgpack-list"),
    pytest.param(msgpack.packb(7), MSGPACK, id="msgpack-int"),
]


# -- /healthz ---------------------------------------------------------------------

def test_healthz_reports_ok_as_json(app):
    response = app.get("/healthz")
    assert response.content_type == JSON
    assert response.json["status"] == "ok"
    assert response.json["store_writable"] is True


def test_healthz_answers_msgpack_when_accept_names_it(app):
    response = app.get("/healthz", headers={"Accept": f"{MSGPACK}, {JSON}"})
    assert response.content_type == MSGPACK
    assert msgpack.unpackb(response.body, raw=False)["status"] == "ok"


def test_healthz_refuses_post_with_a_json_405(app):
    response = app.post("/healthz", expect_errors=True)
    assert error_of(response, 405)["error"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_an_unknown_path_is_a_json_404(app):
    error_of(app.get("/no/such/thing/here", expect_errors=True), 404)


# -- /admin/users -----------------------------------------------------------------

def test_admin_creates_a_user_whose_token_works(app, hub):
    created = post(app, "/admin/users", {"username": "ada"}, token=hub.settings.admin_token)
    assert created.status_int == 201
    assert created.json["username"] == "ada"
    repo = post(app, "/api/repos", {"name": "tune"}, token=created.json["token"])
    assert repo.status_int == 201
    assert repo.json["owner"] == "ada"


def test_admin_users_answers_msgpack_when_accept_names_it(app, hub):
    created = post(app, "/admin/users", {"username": "ada"}, token=hub.settings.admin_token, accept=MSGPACK)
    assert created.content_type == MSGPACK
    assert msgpack.unpackb(created.body, raw=False)["username"] == "ada"


def test_admin_users_without_a_token_is_401(app):
    assert_unauthorized(post(app, "/admin/users", {"username": "ada"}))


def test_admin_users_with_a_user_token_is_403(app, owner):
    error_of(post(app, "/admin/users", {"username": "ada"}, token=owner[1]), 403)


def test_admin_users_refuses_get_with_405(app, hub):
    error_of(app.get("/admin/users", headers=headers(hub.settings.admin_token), expect_errors=True), 405)


@pytest.mark.parametrize("raw, content_type", MALFORMED_BODIES)
def test_admin_users_refuses_a_malformed_body_with_400(app, hub, raw, content_type):
    error_of(post(app, "/admin/users", raw=raw, content_type=content_type, token=hub.settings.admin_token), 400)


@pytest.mark.parametrize("username", [None, 5, ["ada"], {"n": "ada"}, True, "", "../ada", "-ada", "a/b", "a\0b",
                                      "x" * 65])
def test_admin_users_refuses_a_bad_username_with_400(app, hub, username):
    body = error_of(post(app, "/admin/users", {"username": username}, token=hub.settings.admin_token), 400)
    assert body["error"] == "invalid_field"


def test_admin_users_refuses_a_taken_username_with_409(app, hub, owner):
    error_of(post(app, "/admin/users", {"username": "gabriel"}, token=hub.settings.admin_token), 409)


# -- POST /api/repos --------------------------------------------------------------

def test_creating_a_repo_answers_201_with_its_description(app, owner):
    response = post(app, "/api/repos", {"name": "tune"}, token=owner[1])
    assert response.status_int == 201
    described = response.json
    assert {k: described[k] for k in ("owner", "name", "visibility", "default_branch", "domain")} == {
        "owner": "gabriel", "name": "tune", "visibility": "public", "default_branch": None, "domain": "code"}
    assert described["url"] == "http://hub.test/gabriel/tune"


def test_creating_a_private_repo(app, owner):
    response = post(app, "/api/repos", {"name": "tune", "visibility": "private"}, token=owner[1])
    assert response.json["visibility"] == "private"


def test_creating_a_repo_answers_msgpack_when_accept_names_it(app, owner):
    response = post(app, "/api/repos", {"name": "tune"}, token=owner[1], accept=MSGPACK)
    assert response.content_type == MSGPACK
    assert msgpack.unpackb(response.body, raw=False)["name"] == "tune"


def test_creating_a_repo_accepts_a_msgpack_body(app, owner):
    response = post(app, "/api/repos", raw=msgpack.packb({"name": "tune"}), content_type=MSGPACK, token=owner[1])
    assert response.status_int == 201


def test_creating_a_repo_without_a_token_is_401(app):
    assert_unauthorized(post(app, "/api/repos", {"name": "tune"}))


def test_creating_a_repo_with_an_unknown_token_is_401(app):
    assert_unauthorized(post(app, "/api/repos", {"name": "tune"}, token="mph_not-a-real-token"))


@pytest.mark.parametrize("authorization", ["Basic Z2FicmllbDpwdw==", "Bearer", "Bearer ", "token", "Bearer " + "x" * 600])
def test_an_authorization_that_is_not_a_bearer_token_is_401(app, authorization):
    response = app.post("/api/repos", params=b'{"name": "tune"}', expect_errors=True,
                        headers={"Content-Type": JSON, "Authorization": authorization})
    assert_unauthorized(response)


@pytest.mark.parametrize("raw, content_type", MALFORMED_BODIES)
def test_creating_a_repo_refuses_a_malformed_body_with_400(app, owner, raw, content_type):
    error_of(post(app, "/api/repos", raw=raw, content_type=content_type, token=owner[1]), 400)


@pytest.mark.parametrize("name", [None, 5, ["tune"], True, "", "../tune", ".tune", "tu ne", "tu/ne", "tune.",
                                  "a\0b", "x" * 101])
def test_creating_a_repo_refuses_a_bad_name_with_400(app, owner, name):
    assert error_of(post(app, "/api/repos", {"name": name}, token=owner[1]), 400)["error"] == "invalid_field"


@pytest.mark.parametrize("visibility", ["secret", "", None, True, 1, ["public"]])
def test_creating_a_repo_refuses_an_unknown_visibility_with_400(app, owner, visibility):
    body = {"name": "tune", "visibility": visibility}
    assert error_of(post(app, "/api/repos", body, token=owner[1]), 400)["error"] == "invalid_field"


def test_creating_a_repo_twice_is_409(app, owner, repo):
    error_of(post(app, "/api/repos", {"name": "song"}, token=owner[1]), 409)


def test_two_owners_may_use_the_same_repo_name(app, repo, stranger):
    assert post(app, "/api/repos", {"name": "song"}, token=stranger[1]).status_int == 201


def test_api_repos_refuses_get_with_405(app, owner):
    error_of(app.get("/api/repos", headers=headers(owner[1]), expect_errors=True), 405)


# -- GET /api/repos/{owner}/{name} ------------------------------------------------

def test_describing_a_public_repo_needs_no_token(app, repo):
    response = app.get("/api/repos/gabriel/song")
    assert response.content_type == JSON
    assert response.json["repo_id"] == repo.repo_id


def test_describing_a_repo_answers_msgpack_when_accept_names_it(app, repo):
    response = app.get("/api/repos/gabriel/song", headers={"Accept": MSGPACK})
    assert response.content_type == MSGPACK
    assert msgpack.unpackb(response.body, raw=False)["repo_id"] == repo.repo_id


def test_the_owner_may_describe_a_private_repo(app, owner, private_repo):
    response = app.get("/api/repos/gabriel/secret", headers=headers(owner[1]))
    assert response.json["visibility"] == "private"


def test_a_private_repo_is_404_to_a_stranger(app, stranger, private_repo):
    error_of(app.get("/api/repos/gabriel/secret", headers=headers(stranger[1]), expect_errors=True), 404)


def test_a_private_repo_is_404_to_anonymous(app, private_repo):
    error_of(app.get("/api/repos/gabriel/secret", expect_errors=True), 404)


def test_a_private_repo_and_a_missing_one_look_the_same(app, private_repo):
    hidden = error_of(app.get("/api/repos/gabriel/secret", expect_errors=True), 404)
    missing = error_of(app.get("/api/repos/gabriel/nothing", expect_errors=True), 404)
    assert hidden["error"] == missing["error"]


def test_describing_an_unknown_repo_is_404(app, owner):
    error_of(app.get("/api/repos/gabriel/nothing", headers=headers(owner[1]), expect_errors=True), 404)


def test_describing_with_an_unknown_token_is_401(app, repo):
    assert_unauthorized(app.get("/api/repos/gabriel/song", headers=headers("mph_nope"), expect_errors=True))


def test_describing_refuses_post_with_405(app, owner, repo):
    error_of(post(app, "/api/repos/gabriel/song", {}, token=owner[1]), 405)


def test_a_stranger_sees_only_public_repos_of_an_owner(app, hub, owner, stranger):
    make_repo(hub, owner[0], "open", "public")
    make_repo(hub, owner[0], "closed", "private")
    assert app.get("/api/repos/gabriel/open", headers=headers(stranger[1])).status_int == 200
    error_of(app.get("/api/repos/gabriel/closed", headers=headers(stranger[1]), expect_errors=True), 404)


# -- body limits --------------------------------------------------------------------

class TestBodyLimit:
    """A hub built with ``max_body_bytes=2048``."""

    @pytest.fixture
    def settings(self, tmp_path) -> Settings:
        return Settings.for_home(tmp_path / "hub",
                                 database_url=database_url(tmp_path / "hub"), public_url="http://hub.test", job_threads=0,
                                 max_body_bytes=2048)

    def test_a_body_over_the_limit_is_413(self, app, owner):
        body = {"name": "tune", "pad": "x" * 4096}
        assert error_of(post(app, "/api/repos", body, token=owner[1]), 413)["error"] == "body_too_large"

    def test_a_body_just_under_the_limit_is_read(self, app, owner):
        body = {"name": "tune", "pad": ""}
        body["pad"] = "x" * (2048 - len(json.dumps(body)))
        assert post(app, "/api/repos", body, token=owner[1]).status_int == 201

    def test_an_admin_body_over_the_limit_is_413(self, app, hub):
        body = {"username": "ada", "pad": "x" * 4096}
        error_of(post(app, "/admin/users", body, token=hub.settings.admin_token), 413)
