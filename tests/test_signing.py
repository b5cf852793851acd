"""UrlSigner: signed download URLs, their failure modes and key rotation."""
from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl, urlsplit

import pytest

from mpack.format.errors import InvalidId
from storage import UrlSigner, mpack_path
from storage.errors import InvalidUrlToken

HEX = hashlib.sha256(b"an mpack").hexdigest()
PATH = "/mpacks/" + HEX
NOW = 1_700_000_000
OLD_KEY = ("2024a", b"old secret bytes")
NEW_KEY = ("2025b", b"new secret bytes")


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock(NOW)


@pytest.fixture
def signer(clock):
    return UrlSigner([OLD_KEY, NEW_KEY], base_url="https://hub.test/", max_ttl=3600, clock=clock)


def signed(signer, **changes):
    params = signer.sign("GET", PATH, 300)
    params.update(changes)
    return params


def refused(signer, params, method="GET", path=PATH):
    with pytest.raises(InvalidUrlToken) as info:
        signer.verify(method, path, params)
    return info.value.detail


# -- round trip ---------------------------------------------------------------------

def test_signed_params_verify(signer):
    signer.verify("GET", PATH, signer.sign("GET", PATH, 300))


def test_sign_gives_expires_kid_and_unpadded_sig(signer):
    params = signer.sign("GET", PATH, 300)
    assert params["expires"] == str(NOW + 300)
    assert params["kid"] == NEW_KEY[0]
    assert len(params["sig"]) == 43 and "=" not in params["sig"]


def test_method_case_does_not_matter(signer):
    signer.verify("GET", PATH, signer.sign("get", PATH, 300))


def test_url_is_base_url_path_and_query(signer):
    url = urlsplit(signer.url("GET", PATH, 300))
    assert f"{url.scheme}://{url.netloc}{url.path}" == "https://hub.test" + PATH
    signer.verify("GET", url.path, dict(parse_qsl(url.query)))


def test_url_verifies_up_to_and_including_its_expiry_second(signer, clock):
    params = signer.sign("GET", PATH, 300)
    clock.now = NOW + 300
    signer.verify("GET", PATH, params)


def test_ttl_is_capped_at_max_ttl(signer):
    assert signer.sign("GET", PATH, 10 * 24 * 3600)["expires"] == str(NOW + 3600)


@pytest.mark.parametrize("ttl", [0, -1])
def test_non_positive_ttl_is_refused(signer, ttl):
    with pytest.raises(ValueError):
        signer.sign("GET", PATH, ttl)


@pytest.mark.parametrize("path", ["mpacks/x", "/mpacks/../admin", "/mpacks//x", "/a b", "/x?y=1", "/x\n"])
def test_signing_a_non_canonical_path_is_refused(signer, path):
    with pytest.raises(ValueError):
        signer.sign("GET", path, 300)


# -- each failure -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["expires", "kid", "sig"])
def test_missing_param_is_refused(signer, name):
    params = signed(signer)
    del params[name]
    assert refused(signer, params) == f"missing {name}"


@pytest.mark.parametrize("name", ["expires", "kid", "sig"])
def test_over_long_param_is_refused(signer, name):
    assert refused(signer, signed(signer, **{name: "1" * 201})) == f"malformed {name}: too long"


@pytest.mark.parametrize("expires", ["soon", "-5", "+1700000300", " 1700000300", "1_700_000_300", "1e9", ""])
def test_non_integer_expires_is_refused(signer, expires):
    assert refused(signer, signed(signer, expires=expires)).startswith("malformed expires")


@pytest.mark.parametrize("sig", ["", "not base64!", "A" * 42, "A" * 44, "A" * 42 + "B"])
def test_malformed_sig_is_refused(signer, sig):
    assert refused(signer, signed(signer, sig=sig)).startswith("malformed sig")


def test_repeated_param_is_refused(signer):
    params = signed(signer)
    params["kid"] = [params["kid"], params["kid"]]
    assert refused(signer, params).startswith("malformed kid")


def test_unknown_kid_is_refused(signer):
    assert refused(signer, signed(signer, kid="retired")) == "unknown key id"


def test_tampered_sig_is_refused(signer):
    params = signed(signer)
    flipped = "B" if params["sig"][0] == "A" else "A"
    assert refused(signer, signed(signer, sig=flipped + params["sig"][1:])) == "bad signature"


def test_tampered_path_is_refused(signer):
    other = "/mpacks/" + hashlib.sha256(b"another").hexdigest()
    assert refused(signer, signed(signer), path=other) == "bad signature"


def test_tampered_expires_is_refused(signer):
    params = signed(signer)
    assert refused(signer, signed(signer, expires=str(int(params["expires"]) + 1))) == "bad signature"


def test_expired_url_is_refused(signer, clock):
    params = signed(signer)
    clock.now = NOW + 301
    assert refused(signer, params) == "expired"


def test_expiry_beyond_max_ttl_and_slack_is_refused(signer):
    assert refused(signer, signed(signer, expires=str(NOW + 3600 + 61))) == "expires too far in the future"


def test_expiry_within_clock_slack_is_accepted_if_signed(clock):
    ahead = UrlSigner([NEW_KEY], base_url="", max_ttl=3600, clock=Clock(NOW + 60))
    behind = UrlSigner([NEW_KEY], base_url="", max_ttl=3600, clock=clock)
    behind.verify("GET", PATH, ahead.sign("GET", PATH, 3600))


def test_token_for_put_is_no_token_for_get(signer):
    params = signer.sign("PUT", PATH, 300)
    assert refused(signer, params, method="GET") == "bad signature"


def test_token_for_get_is_no_token_for_put(signer):
    assert refused(signer, signed(signer), method="PUT") == "bad signature"


@pytest.mark.parametrize("path", ["/mpacks/../x", "relative", ""])
def test_non_canonical_path_is_refused_on_verify(signer, path):
    assert refused(signer, signed(signer), path=path) == "malformed method or path"


# -- rotation -----------------------------------------------------------------------

def test_newest_key_signs(signer):
    assert signer.sign("GET", PATH, 300)["kid"] == NEW_KEY[0]


def test_url_signed_by_an_older_key_still_verifies(clock):
    before_rotation = UrlSigner([OLD_KEY], base_url="", clock=clock)
    after_rotation = UrlSigner([OLD_KEY, NEW_KEY], base_url="", clock=clock)
    after_rotation.verify("GET", PATH, before_rotation.sign("GET", PATH, 300))


def test_url_signed_by_a_dropped_key_is_refused(clock):
    before = UrlSigner([OLD_KEY], base_url="", clock=clock)
    after = UrlSigner([NEW_KEY], base_url="", clock=clock)
    assert refused(after, before.sign("GET", PATH, 300)) == "unknown key id"


def test_same_kid_with_another_secret_is_refused(clock):
    forger = UrlSigner([(NEW_KEY[0], b"guessed secret")], base_url="", clock=clock)
    genuine = UrlSigner([NEW_KEY], base_url="", clock=clock)
    assert refused(genuine, forger.sign("GET", PATH, 300)) == "bad signature"


# -- construction -------------------------------------------------------------------

@pytest.mark.parametrize("keys", [
    [], [("", b"s")], [("has space", b"s")], [("k" * 33, b"s")], [("k", b"")], [("k", "str")],
    [("k", b"a"), ("k", b"b")],
])
def test_bad_keys_are_refused(keys):
    with pytest.raises(ValueError):
        UrlSigner(keys, base_url="")


def test_repr_hides_secrets(signer):
    for text in (repr(signer), str(signer)):
        assert "2025b" in text
        assert "secret" not in text


# -- mpack_path ---------------------------------------------------------------------

def test_mpack_path_accepts_either_id_spelling():
    assert mpack_path(HEX) == mpack_path("sha256:" + HEX) == PATH


def test_mpack_path_refuses_a_malformed_id():
    with pytest.raises(InvalidId):
        mpack_path("../../etc/passwd")
