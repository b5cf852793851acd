"""MemoryStore specifics: no local paths, times from the injected clock."""
from __future__ import annotations

import hashlib

import pytest

from storage import BLOBS, MemoryStore, UrlSigner

DATA = b"hello muse\n"
DIGEST = hashlib.sha256(DATA).hexdigest()


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock(1_700_000_000.0)


@pytest.fixture
def store(clock):
    return MemoryStore(UrlSigner([("k1", b"secret-one")], base_url="https://hub.test"), clock=clock)


def test_local_path_is_none(store):
    store.put_bytes(BLOBS, DIGEST, DATA)
    assert store.local_path(BLOBS, DIGEST) is None


def test_stat_mtime_is_the_commit_time(store, clock):
    store.put_bytes(BLOBS, DIGEST, DATA)
    clock.now += 50
    assert store.stat(BLOBS, DIGEST) == (len(DATA), 1_700_000_000.0)


def test_iter_temp_reports_when_the_temp_was_created(store, clock):
    with store.new_file(BLOBS) as pending:
        clock.now += 50
        assert list(store.iter_temp()) == [(pending.name, 1_700_000_000.0)]


def test_open_returns_independent_readers(store):
    store.put_bytes(BLOBS, DIGEST, DATA)
    with store.open(BLOBS, DIGEST) as first, store.open(BLOBS, DIGEST) as second:
        assert first.read(5) == DATA[:5]
        assert second.read() == DATA
