"""The signed download route ``GET|HEAD /mpacks/{id}?expires&kid&sig``.

URLs come from ``POST /{owner}/{repo}/fetch/mpack`` after a real push. The
token is checked before the disk is touched; every refusal is a JSON 403.
"""
from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from mpack.format import ids
from mpack.hub.slots import Slots
from storage import MPACKS
from tests.factories import History, error_of, push_history, unpack, wire

JSON = "application/json"
SONG = "/gabriel/song"
HUB = "http://hub.test"


# -- helpers ----------------------------------------------------------------------



def fetch_mpack(app, want: str) -> dict:
    return unpack(wire(app, "POST", f"{SONG}/fetch/mpack", {"want": [want]}, status=200))


def local(url: str) -> str:
    assert url.startswith(HUB + "/mpacks/")
    return url[len(HUB):]


def split(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return parts.path, dict(parse_qsl(parts.query, keep_blank_values=True))


def rebuild(path: str, params: dict[str, str]) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def with_params(url: str, **changes: str | None) -> str:
    """``url`` with some query parameters replaced (None drops one)."""
    path, params = split(url)
    for name, value in changes.items():
        if value is None:
            params.pop(name, None)
        else:
            params[name] = value
    return rebuild(path, params)


def flip(text: str) -> str:
    """``text`` with its first character changed, staying in the base64url alphabet."""
    return ("B" if text[0] == "A" else "A") + text[1:]


@pytest.fixture
def history(app, owner, repo) -> History:
    history = History().linear(3)
    push_history(app, owner[1], SONG, history)
    return history


@pytest.fixture
def answer(app, history) -> dict:
    return fetch_mpack(app, history.tip)


@pytest.fixture
def url(answer) -> str:
    return local(answer["mpack_url"])


@pytest.fixture
def digest(answer) -> str:
    return ids.hex_of(answer["mpack_id"])


@pytest.fixture
def stored(hub, digest) -> bytes:
    with hub.store.open(MPACKS, digest) as source:
        return source.read()


# -- serving ------------------------------------------------------------------------

def test_a_signed_url_serves_the_stored_pack(app, url, digest, stored):
    response = app.get(url)
    assert response.status_int == 200
    assert response.body == stored
    assert response.headers["Content-Length"] == str(len(stored))
    assert response.headers["ETag"] == f'"{digest}"'
    assert response.headers["Accept-Ranges"] == "bytes"
    assert "immutable" in response.headers["Cache-Control"]
    assert response.content_type == "application/vnd.muse.mpack"


def test_the_url_names_the_pack_it_was_issued_for(answer, url, digest):
    assert split(url)[0] == f"/mpacks/{digest}"
    assert answer["size_bytes"] > 0


def test_a_pack_starts_with_the_muse_magic(app, url):
    assert app.get(url).body.startswith(b"MUSE\0")


def test_head_sends_the_headers_without_a_body(app, url, digest, stored):
    response = app.head(url)
    assert response.status_int == 200
    assert response.body == b""
    assert response.headers["Content-Length"] == str(len(stored))
    assert response.headers["ETag"] == f'"{digest}"'
    assert response.headers["Accept-Ranges"] == "bytes"


def test_head_checks_the_token_like_get(app, url):
    _, params = split(url)
    response = app.head(with_params(url, sig=flip(params["sig"])), expect_errors=True)
    assert response.status_int == 403


def test_a_url_is_good_until_it_expires(app, clock, url):
    _, params = split(url)
    clock.now = int(params["expires"])
    assert app.get(url).status_int == 200


def test_the_prefixed_spelling_of_the_id_reaches_the_same_pack(app, url, digest, stored):
    _, params = split(url)
    assert app.get(rebuild(f"/mpacks/sha256:{digest}", params)).body == stored


def test_post_is_a_json_405(app, url):
    error_of(app.post(url, expect_errors=True), 405)


def test_a_malformed_pack_id_is_400(app, url):
    _, params = split(url)
    error_of(app.get(rebuild("/mpacks/not-a-pack-id", params), expect_errors=True), 400)


# -- refusing a token ---------------------------------------------------------------

@pytest.mark.parametrize("missing", ["expires", "kid", "sig"])
def test_a_url_missing_a_token_parameter_is_403(app, url, missing):
    body = error_of(app.get(with_params(url, **{missing: None}), expect_errors=True), 403)
    assert body["error"] == "invalid_url_token"


def test_a_url_without_any_token_is_403(app, url):
    error_of(app.get(split(url)[0], expect_errors=True), 403)


@pytest.mark.parametrize("expires", ["soon", "-1", "1e10", "", " 1", "9" * 13])
def test_a_malformed_expiry_is_403(app, url, expires):
    error_of(app.get(with_params(url, expires=expires), expect_errors=True), 403)


def test_a_tampered_signature_is_403(app, url):
    _, params = split(url)
    error_of(app.get(with_params(url, sig=flip(params["sig"])), expect_errors=True), 403)


@pytest.mark.parametrize("sig", ["", "short", "A" * 44, "A" * 42 + "=", "!" * 43])
def test_a_malformed_signature_is_403(app, url, sig):
    error_of(app.get(with_params(url, sig=sig), expect_errors=True), 403)


def test_a_tampered_expiry_is_403(app, url):
    _, params = split(url)
    error_of(app.get(with_params(url, expires=str(int(params["expires"]) + 1)), expect_errors=True), 403)


def test_an_unknown_key_id_is_403(app, url):
    error_of(app.get(with_params(url, kid="k99"), expect_errors=True), 403)


def test_a_token_for_another_pack_is_403(app, owner, history, url):
    other = history.commit({"other.txt": b"other"})
    push_history(app, owner[1], SONG, history, branch="other", commits=[other])
    other_path, _ = split(local(fetch_mpack(app, other["commit_id"])["mpack_url"]))
    _, params = split(url)
    assert other_path != split(url)[0]
    error_of(app.get(rebuild(other_path, params), expect_errors=True), 403)


def test_an_expired_token_is_403(app, clock, url):
    _, params = split(url)
    clock.now = int(params["expires"]) + 1
    body = error_of(app.get(url, expect_errors=True), 403)
    assert "expired" in body["detail"]


def test_a_token_signed_for_put_is_403(app, hub, url):
    path, _ = split(url)
    error_of(app.get(hub.store.signer.url("PUT", path, 60)[len(HUB):], expect_errors=True), 403)


def test_a_pack_deleted_from_the_store_is_404(app, hub, url, digest):
    assert hub.store.delete(MPACKS, digest)
    error_of(app.get(url, expect_errors=True), 404)


def test_a_bad_token_is_403_even_when_the_pack_is_gone(app, hub, url, digest):
    hub.store.delete(MPACKS, digest)
    error_of(app.get(with_params(url, sig=None), expect_errors=True), 403)


# -- Range --------------------------------------------------------------------------

def get_range(app, url: str, header: str, status: int | str = "*"):
    return app.get(url, headers={"Range": header}, status=status)


def test_a_range_from_the_start_is_206(app, url, stored):
    response = get_range(app, url, "bytes=0-9", 206)
    assert response.body == stored[:10]
    assert response.headers["Content-Range"] == f"bytes 0-9/{len(stored)}"
    assert response.headers["Content-Length"] == "10"


def test_a_range_in_the_middle_is_206(app, url, stored):
    response = get_range(app, url, "bytes=10-19", 206)
    assert response.body == stored[10:20]
    assert response.headers["Content-Range"] == f"bytes 10-19/{len(stored)}"


def test_a_suffix_range_serves_the_last_bytes(app, url, stored):
    response = get_range(app, url, "bytes=-5", 206)
    assert response.body == stored[-5:]
    size = len(stored)
    assert response.headers["Content-Range"] == f"bytes {size - 5}-{size - 1}/{size}"


def test_a_suffix_longer_than_the_pack_serves_all_of_it(app, url, stored):
    response = get_range(app, url, f"bytes=-{len(stored) + 100}", 206)
    assert response.body == stored
    assert response.headers["Content-Range"] == f"bytes 0-{len(stored) - 1}/{len(stored)}"


def test_an_open_range_runs_to_the_end(app, url, stored):
    response = get_range(app, url, "bytes=10-", 206)
    assert response.body == stored[10:]
    assert response.headers["Content-Range"] == f"bytes 10-{len(stored) - 1}/{len(stored)}"


def test_a_range_ending_beyond_the_pack_is_clamped(app, url, stored):
    response = get_range(app, url, f"bytes=5-{len(stored) + 1000}", 206)
    assert response.body == stored[5:]
    assert response.headers["Content-Range"] == f"bytes 5-{len(stored) - 1}/{len(stored)}"


def test_the_last_byte_alone(app, url, stored):
    last = len(stored) - 1
    assert get_range(app, url, f"bytes={last}-{last}", 206).body == stored[-1:]


@pytest.mark.parametrize("start", [0, 1, 1000])
def test_a_range_starting_beyond_the_end_is_416(app, url, stored, start):
    response = get_range(app, url, f"bytes={len(stored) + start}-", 416)
    error_of(response, 416)
    assert response.headers["Content-Range"] == f"bytes */{len(stored)}"


def test_an_empty_suffix_is_416(app, url, stored):
    response = get_range(app, url, "bytes=-0", 416)
    assert response.headers["Content-Range"] == f"bytes */{len(stored)}"


def test_head_with_a_range_sends_the_partial_headers(app, url, stored):
    response = app.head(url, headers={"Range": "bytes=0-9"}, status=206)
    assert response.body == b""
    assert response.headers["Content-Length"] == "10"
    assert response.headers["Content-Range"] == f"bytes 0-9/{len(stored)}"


@pytest.mark.parametrize("header", ["bytes=0-1,4-5", "bytes=x", "bytes=10-5", "items=0-9", "bytes=-", "bytes 0-9",
                                    "bytes=0x1-2"])
def test_a_range_that_is_several_or_invalid_serves_the_whole_pack(app, url, stored, header):
    response = get_range(app, url, header, 200)
    assert response.body == stored
    assert "Content-Range" not in response.headers


# -- what downloads may hold of a worker (hub.download_slots, mpack/hub/slots.py) ----------------------

def one_download_slot(hub) -> None:
    hub.download_slots = Slots(1, 1, wait=0, noun="download slot")


def test_a_download_while_every_slot_is_taken_is_a_503_to_retry_and_a_head_needs_none(app, hub, url, stored):
    one_download_slot(hub)
    with hub.download_slots.held("address:192.0.2.1"):  # another client reading a pack
        busy = app.get(url, status=503, expect_errors=True)
        head = app.head(url, status=200)
    assert error_of(busy, 503)["error"] == "busy" and busy.headers["Retry-After"] == "1"
    assert head.headers["Content-Length"] == str(len(stored))
    assert app.get(url, status=200).body == stored  # given back: the next one is served


def test_one_client_may_hold_only_its_share_of_the_download_slots(app, hub, url, stored):
    hub.download_slots = Slots(3, 2, wait=0, noun="download slot")
    with hub.download_slots.held("address:198.51.100.7"), hub.download_slots.held("address:198.51.100.7"):
        refused = app.get(url, extra_environ={"REMOTE_ADDR": "198.51.100.7"}, status=503, expect_errors=True)
        other = app.get(url, extra_environ={"REMOTE_ADDR": "198.51.100.8"}, status=200)
    assert "this client holds 2 download slot(s)" in refused.json["detail"]
    assert other.body == stored


def test_finished_and_refused_downloads_give_their_slots_back(app, hub, url, stored):
    one_download_slot(hub)
    for _ in range(3):
        assert app.get(url, headers={"Range": "bytes=0-9"}, status=206).body == stored[:10]
    app.get(url, headers={"Range": f"bytes={len(stored)}-"}, status=416)  # refused after the token check
    assert app.get(url, status=200).body == stored
