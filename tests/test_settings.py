"""Settings from the environment: defaults, bounds, generated secrets kept private."""
from __future__ import annotations

import stat

import pytest

from mpack.hub.bootstrap import open_store
from mpack.hub.settings import Settings, SettingsError, secrets_path
from tests.test_storage_local import make_signer


def test_defaults_live_under_home(tmp_path):
    settings = Settings.from_env({"MPACKHUB_HOME": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'mpackhub.sqlite3'}"
    assert (settings.cache_ttl, settings.url_ttl, settings.url_ttl_max) == (7 * 86400, 3600, 7 * 86400)
    assert settings.public_url == "http://127.0.0.1:8000"


def test_public_url_follows_the_bind_address_unless_set(tmp_path):
    env = {"MPACKHUB_HOME": str(tmp_path), "MPACKHUB_BIND": "127.0.0.1:9001"}
    assert Settings.from_env(env).public_url == "http://127.0.0.1:9001"
    assert Settings.from_env({**env, "MPACKHUB_PUBLIC_URL": "https://hub.example/"}).public_url == "https://hub.example"


def test_missing_secrets_are_generated_once_with_mode_0600(tmp_path):
    first = Settings.from_env({"MPACKHUB_HOME": str(tmp_path)})
    second = Settings.from_env({"MPACKHUB_HOME": str(tmp_path)})
    assert first.admin_token == second.admin_token and first.signing_keys == second.signing_keys
    assert stat.S_IMODE(secrets_path(tmp_path).stat().st_mode) == 0o600


def test_secrets_never_show_in_repr_or_description(tmp_path):
    settings = Settings.from_env({"MPACKHUB_HOME": str(tmp_path)})
    secret = settings.signing_keys[0][1].decode()
    for shown in (repr(settings), str(settings.describe())):
        assert settings.admin_token not in shown and secret not in shown


def test_signing_keys_rotate_oldest_to_newest(tmp_path):
    settings = Settings.from_env({"MPACKHUB_HOME": str(tmp_path), "MPACKHUB_ADMIN_TOKEN": "a" * 20,
                                  "MPACKHUB_SIGNING_KEYS": "old:" + "x" * 16 + ",new:" + "y" * 16})
    assert [kid for kid, _ in settings.signing_keys] == ["old", "new"]
    assert not secrets_path(tmp_path).exists()  # nothing generated when both are configured


@pytest.mark.parametrize("name, value", [
    ("MPACKHUB_CACHE_TTL", "soon"), ("MPACKHUB_JOB_THREADS", "-1"), ("MPACKHUB_URL_TTL", "999999999"),
    ("MPACKHUB_URL_TTL_MAX", "99999999"), ("MPACKHUB_SIGNING_KEYS", "nokey"), ("MPACKHUB_ADMIN_TOKEN", "short"),
    ("MPACKHUB_JOB_POLL_SECONDS", "fast"), ("MPACKHUB_STORE_SYNC", "never"),
    ("MPACKHUB_TRUSTED_PROXIES", "10.0.0.1,proxy.example"), ("MPACKHUB_REQUEST_BUILDS_PER_CLIENT", "-1"),
])
def test_bad_values_are_refused_with_the_variable_named(tmp_path, name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({"MPACKHUB_HOME": str(tmp_path), name: value})


@pytest.mark.parametrize("value, expected", [
    (None, ("127.0.0.1", "::1")), ("", ()), (" 10.0.0.1 , 0:0:0:0:0:0:0:1 ", ("10.0.0.1", "::1")),
])
def test_trusted_proxies_are_addresses_as_a_peer_spells_them(tmp_path, value, expected):
    environ = {"MPACKHUB_HOME": str(tmp_path)} | ({} if value is None else {"MPACKHUB_TRUSTED_PROXIES": value})
    assert Settings.from_env(environ).trusted_proxies == expected


def test_the_store_defaults_to_the_local_directory_under_home(tmp_path):
    settings = Settings.from_env({"MPACKHUB_HOME": str(tmp_path)})
    assert (settings.store_kind, settings.store_root) == ("file", tmp_path / "store")


@pytest.mark.parametrize("value, expected", [(None, "syncfs"), ("fsync", "fsync"), ("SYNCFS", "syncfs")])
def test_store_sync_picks_how_the_local_store_makes_pushed_blobs_durable(tmp_path, value, expected):
    env = {"MPACKHUB_HOME": str(tmp_path), **({"MPACKHUB_STORE_SYNC": value} if value else {})}
    settings = Settings.from_env(env)
    assert settings.store_sync == expected
    assert open_store(settings, make_signer()).batch_sync == expected


def test_store_url_picks_a_directory_or_a_bucket(tmp_path):
    env = {"MPACKHUB_HOME": str(tmp_path)}
    local = Settings.from_env({**env, "MPACKHUB_STORE_URL": "file:///srv/mpack/store"})
    assert (local.store_kind, str(local.store_root)) == ("file", "/srv/mpack/store")
    bucket = Settings.from_env({**env, "MPACKHUB_STORE_URL": "s3://packs/hub", "MPACKHUB_S3_REGION": "auto",
                                "MPACKHUB_S3_ENDPOINT_URL": "https://r2.example"})
    assert (bucket.store_kind, bucket.s3_region, bucket.s3_endpoint_url) == ("s3", "auto", "https://r2.example")


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "file://relative/path", "gs://bucket", "/srv/store",
                                 "s3://b/p?versionId=1"])
def test_a_bad_store_url_is_refused_with_the_variable_named(tmp_path, url):
    with pytest.raises(SettingsError, match="MPACKHUB_STORE_URL"):
        Settings.from_env({"MPACKHUB_HOME": str(tmp_path), "MPACKHUB_STORE_URL": url})
