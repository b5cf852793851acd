"""Early write-back of large pending files: advisory, never changes what is written."""
from __future__ import annotations

import os
import sys

import pytest

from storage import writeback
from storage.base import MPACKS
from storage.local import LocalStore
from storage.signing import UrlSigner


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_write_back_starts_once_per_step_of_bytes_written(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(writeback, "_CALL", lambda fd, offset, length, flags: calls.append((offset, length)) or 0)
    tracker = writeback.Writeback(step=100)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (60, 120, 150, 260, 330):
            tracker.written(fd, size)
    finally:
        os.close(fd)
    assert calls == [(0, 120), (120, 140)]


def test_a_large_pending_file_is_stored_whole_with_write_back_on(tmp_path, monkeypatch):
    monkeypatch.setattr(writeback, "STEP", 1 << 10)
    real, started = writeback._CALL, []
    if real is not None:
        monkeypatch.setattr(writeback, "_CALL", lambda *args: started.append(args[1:3]) or real(*args))
    store = LocalStore(tmp_path / "store", UrlSigner([("k1", b"secret-one")], base_url="https://hub.test"), fsync=True)
    data = os.urandom(1 << 16)
    with store.new_file(MPACKS) as pending:
        for start in range(0, len(data), 1000):
            pending.write(data[start:start + 1000])
        digest = pending.commit()
    with store.open(MPACKS, digest) as stored:
        assert stored.read() == data
    if real is not None:  # every byte but the last step's was handed to write-back, in order, once
        assert [offset for offset, _ in started] == [0] + [sum(n for _, n in started[:i]) for i in range(1, len(started))]
        assert len(data) - (1 << 10) < sum(n for _, n in started) <= len(data)
