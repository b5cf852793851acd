"""Every test gets its own hub: a real database and a real store under tmp_path.

The database is a SQLite file, or with ``MPACKHUB_TEST_DATABASE=postgresql`` a
fresh database in a throwaway PostgreSQL cluster (tests/database.py).
"""
from __future__ import annotations

import pytest
import webtest

from app import create_app
from mpack.hub.bootstrap import build_hub
from mpack.hub.settings import Settings
from tests import database
from tests.factories import Clock, make_repo, make_user


@pytest.fixture(scope="session", autouse=True)
def _postgres_cluster(tmp_path_factory):
    if not database.POSTGRES:
        yield None
        return
    manager = database.start_cluster(tmp_path_factory.getbasetemp())
    try:
        yield database.cluster()
    finally:
        manager.__exit__(None, None, None)


@pytest.fixture(autouse=True)
def _drop_test_databases():
    since = database.made_so_far()
    yield
    database.drop_made(since)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(tmp_path) -> Settings:
    home = tmp_path / "hub"
    return Settings.for_home(home, database_url=database.database_url(home), public_url="http://hub.test",
                             job_threads=0)


@pytest.fixture
def hub(settings, clock):
    hub = build_hub(settings, clock=clock)
    yield hub
    hub.stop_pool()
    hub.db.close()


@pytest.fixture
def app(hub) -> webtest.TestApp:
    return webtest.TestApp(create_app(hub))


@pytest.fixture
def owner(hub):
    """(user, token) of the repo owner, 'gabriel'."""
    return make_user(hub, "gabriel")


@pytest.fixture
def stranger(hub):
    return make_user(hub, "mallory")


@pytest.fixture
def repo(hub, owner):
    return make_repo(hub, owner[0], "song", "public")


@pytest.fixture
def private_repo(hub, owner):
    return make_repo(hub, owner[0], "secret", "private")
