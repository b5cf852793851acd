"""The cache-hit route of POST /fetch/mpack (issue 8 item 4): one SELECT by commit id or by branch name."""
from __future__ import annotations

import pytest

from mpack.hub import fetch
from mpack.hub.models import FetchMPackCache
from tests.factories import History, error_of, fake_commit_id, make_repo, push_history, unpack, wire

PATH = "/gabriel/song"


@pytest.fixture
def pushed(app, owner, repo) -> History:
    history = History().linear(4)
    push_history(app, owner[1], PATH, history)
    return history


@pytest.fixture
def statements(hub, monkeypatch):
    """Every SQL statement the hub's database runs while the test watches."""
    seen: list[str] = []
    real = hub.db.execute_sql

    def counting(sql, params=None, *args, **kwargs):
        seen.append(sql)
        return real(sql, params, *args, **kwargs)

    monkeypatch.setattr(hub.db, "execute_sql", counting)
    return seen


def fetch_mpack(app, want, have=(), token=None, status=200):
    response = wire(app, "POST", f"{PATH}/fetch/mpack", {"want": list(want), "have": list(have)}, token=token)
    assert response.status_int == status, response.body
    return unpack(response)


@pytest.mark.parametrize("by", ["commit id", "branch name"])
def test_a_hit_is_one_select_by_commit_id_and_by_branch_name(app, pushed, statements, by):
    first = fetch_mpack(app, [pushed.tip])
    want = pushed.tip if by == "commit id" else "main"
    statements.clear()
    hit = fetch_mpack(app, [want])
    assert hit["cached"] is True and hit["mpack_id"] == first["mpack_id"]
    assert len(statements) == 1 and statements[0].lstrip().upper().startswith("SELECT")


def test_a_hit_by_branch_follows_the_branch_when_it_moves(app, owner, pushed):
    before = fetch_mpack(app, ["main"])
    pushed.commit({"later.txt": b"later"})
    push_history(app, owner[1], PATH, pushed, commits=pushed.commits[-1:])
    after = fetch_mpack(app, ["main"])
    assert after["mpack_id"] != before["mpack_id"] and after["commit_count"] == before["commit_count"] + 1
    again = fetch_mpack(app, ["main"])
    assert again["cached"] is True and again["mpack_id"] == after["mpack_id"]


def test_a_hit_with_haves_is_keyed_by_them(app, pushed):
    old = pushed.commits[1]["commit_id"]
    delta = fetch_mpack(app, ["main"], [old])
    again = fetch_mpack(app, ["main"], [old])
    assert again["cached"] is True and again["mpack_id"] == delta["mpack_id"]
    assert fetch_mpack(app, ["main"])["mpack_id"] != delta["mpack_id"]


def test_an_expired_row_is_no_hit(app, hub, clock, pushed):
    first = fetch_mpack(app, ["main"])
    clock.advance(hub.settings.cache_ttl + 1)
    again = fetch_mpack(app, ["main"])
    assert again["cached"] is False and again["mpack_id"] == first["mpack_id"]  # rebuilt, same bytes


def test_the_hit_path_keeps_private_repos_hidden(app, hub, owner, stranger):
    make_repo(hub, owner[0], "secret", "private")
    history = History().linear(2)
    push_history(app, owner[1], "/gabriel/secret", history)
    body = {"want": ["main"], "have": []}
    mine = unpack(wire(app, "POST", "/gabriel/secret/fetch/mpack", body, token=owner[1]))
    assert unpack(wire(app, "POST", "/gabriel/secret/fetch/mpack", body, token=owner[1]))["cached"] is True
    assert mine["mpack_id"]
    for token in (None, stranger[1]):
        response = wire(app, "POST", "/gabriel/secret/fetch/mpack", body, token=token)
        assert error_of(response, 404)["error"] == "repo_not_found"
        response = wire(app, "POST", "/gabriel/secret/fetch/mpack", {"want": [history.tip], "have": []}, token=token)
        assert error_of(response, 404)["error"] == "repo_not_found"


def test_an_unknown_repo_is_404_before_a_bad_body(app, pushed):
    response = wire(app, "POST", "/gabriel/nothing/fetch/mpack", {"want": "main"})
    assert error_of(response, 404)["error"] == "repo_not_found"
    response = app.post("/gabriel/nothing/fetch/mpack", b"{not json", headers={"Content-Type": "application/json"},
                        expect_errors=True)
    assert error_of(response, 404)["error"] == "repo_not_found"
    assert error_of(wire(app, "POST", f"{PATH}/fetch/mpack", {"want": "main"}), 400)["error"] == "invalid_field"


def test_an_unknown_branch_or_commit_is_still_refused(app, pushed):
    assert error_of(wire(app, "POST", f"{PATH}/fetch/mpack", {"want": ["nope"], "have": []}), 404)
    assert error_of(wire(app, "POST", f"{PATH}/fetch/mpack", {"want": [fake_commit_id("never pushed")], "have": []}), 404)


@pytest.mark.parametrize("name", ["HEAD", "refs/heads/main", "main/", "a..b", "x" * 256, "ma\u00efn/../x"])
def test_a_want_no_branch_could_be_named_is_refused_as_before(app, pushed, name):
    """The hit path looks up any NUL-free ASCII name (it only finds no row); the answer is the general path's."""
    assert error_of(wire(app, "POST", f"{PATH}/fetch/mpack", {"want": [name], "have": []}), 404)


def test_a_row_gc_deleted_after_the_select_is_a_miss_not_a_dangling_url(app, hub, clock, pushed, monkeypatch):
    fetch_mpack(app, ["main"])
    clock.advance(120)  # the hit will want to slide the expiry: it finds the row gone
    real = fetch.cache.hit_row

    def then_gc(*args, **kwargs):
        row = real(*args, **kwargs)
        FetchMPackCache.delete().execute()
        return row

    monkeypatch.setattr(fetch.cache, "hit_row", then_gc)
    answer = fetch_mpack(app, ["main"])
    assert answer["cached"] is False
    assert FetchMPackCache.select().count() == 1


def test_the_hit_path_never_hands_out_an_older_format_pack(app, hub, pushed):
    first = fetch_mpack(app, ["main"])
    FetchMPackCache.update(format_version=1).execute()  # as if cached before the upgrade
    again = fetch_mpack(app, ["main"])
    assert again["cached"] is False and again["mpack_id"] == first["mpack_id"]  # rebuilt in the current format
    assert fetch_mpack(app, [pushed.tip])["cached"] is True
