"""``MPACKHUB_ACCEL_REDIRECT``: the download route checks the token, then hands the file to the proxy.

The real app on a real store and SQLite file (webtest); what nginx does with
the answer is tested against a real nginx in tests/test_behind_nginx.py.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import webtest

from app import create_app
from mpack.format import ids
from mpack.hub.settings import Settings, SettingsError
from storage import MPACKS
from tests.factories import History, error_of, push_history
from tests.test_download import SONG, fetch_mpack, flip, local, one_download_slot, split, with_params
from tests.test_metrics import scrape, value

INTERNAL = "/_mpackhub_packs/"


@pytest.fixture
def settings(settings) -> Settings:
    return dataclasses.replace(settings, accel_redirect=INTERNAL)


@pytest.fixture
def app(hub) -> webtest.TestApp:
    """Requests as nginx on this machine makes them: from 127.0.0.1, a trusted proxy."""
    return webtest.TestApp(create_app(hub), extra_environ={"REMOTE_ADDR": "127.0.0.1"})


@pytest.fixture
def url(app, owner, repo) -> str:
    history = History().linear(3)
    push_history(app, owner[1], SONG, history)
    return local(fetch_mpack(app, history.tip)["mpack_url"])


def handed_path(hub, url: str) -> str:
    digest = ids.hex_of(split(url)[0].rsplit("/", 1)[1])
    return INTERNAL + f"{digest[:2]}/{digest}"


def test_a_good_token_is_answered_with_the_file_for_the_proxy_to_send(app, hub, url):
    response = app.get(url, status=200)
    assert response.headers["X-Accel-Redirect"] == handed_path(hub, url)
    assert response.body == b"" and "immutable" in response.headers["Cache-Control"]
    assert response.content_type == "application/vnd.muse.mpack"
    served = Path(hub.store.root) / MPACKS / response.headers["X-Accel-Redirect"].removeprefix(INTERNAL)
    with hub.store.open(MPACKS, ids.hex_of(split(url)[0].rsplit("/", 1)[1])) as stored:
        assert served.read_bytes() == stored.read()


def test_head_is_handed_over_like_get(app, hub, url):
    assert app.head(url, status=200).headers["X-Accel-Redirect"] == handed_path(hub, url)


def test_a_request_that_did_not_come_through_the_proxy_gets_the_pack_itself(app, hub, url):
    """A client that reaches the hub directly (its peer is no trusted proxy) would get an empty answer."""
    direct = app.get(url, extra_environ={"REMOTE_ADDR": "198.51.100.7"}, status=200)
    assert "X-Accel-Redirect" not in direct.headers
    with hub.store.open(MPACKS, ids.hex_of(split(url)[0].rsplit("/", 1)[1])) as stored:
        assert direct.body == stored.read()


def test_a_range_is_left_to_the_proxy(app, hub, url):
    response = app.get(url, headers={"Range": "bytes=0-9"}, status=200)
    assert response.headers["X-Accel-Redirect"] == handed_path(hub, url) and "Content-Range" not in response.headers


def test_a_handed_over_download_takes_no_slot(app, hub, url):
    one_download_slot(hub)
    with hub.download_slots.held("address:192.0.2.1"):
        assert app.get(url, status=200).headers["X-Accel-Redirect"]


def test_a_tampered_token_is_refused_before_anything_is_handed_over(app, url):
    refused = app.get(with_params(url, sig=flip(split(url)[1]["sig"])), status=403, expect_errors=True)
    assert error_of(refused, 403)["error"] == "invalid_url_token" and "X-Accel-Redirect" not in refused.headers


def test_a_pack_gone_from_the_store_is_404_from_the_hub(app, hub, url):
    hub.store.delete(MPACKS, ids.hex_of(split(url)[0].rsplit("/", 1)[1]))
    gone = app.get(url, status=404, expect_errors=True)
    assert error_of(gone, 404)["error"] == "mpack_missing" and "X-Accel-Redirect" not in gone.headers


def test_handed_over_downloads_are_counted_as_proxied_and_heads_are_not(app, hub, url):
    app.head(url, status=200)
    app.get(url, status=200)
    samples = scrape(app, hub.settings.admin_token)
    assert value(samples, "mpackhub_downloads_total", kind="proxied") == 1
    assert value(samples, "mpackhub_downloads_total", kind="full") == 0


@pytest.mark.parametrize("spec", ["_packs/", "/_packs", "/", "/a b/", "/../x/", "http://x/", "/a//b/"])
def test_a_location_that_is_not_a_plain_path_is_refused(tmp_path, spec):
    with pytest.raises(SettingsError, match="MPACKHUB_ACCEL_REDIRECT"):
        Settings.from_env({"MPACKHUB_HOME": str(tmp_path), "MPACKHUB_ACCEL_REDIRECT": spec})


def test_the_location_is_read_from_the_environment(tmp_path):
    settings = Settings.from_env({"MPACKHUB_HOME": str(tmp_path), "MPACKHUB_ACCEL_REDIRECT": " /_mpackhub/packs/ "})
    assert settings.accel_redirect == "/_mpackhub/packs/"
    assert Settings.from_env({"MPACKHUB_HOME": str(tmp_path)}).accel_redirect == ""
