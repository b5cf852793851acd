"""Write-behind of large pending files (early write-back, pages dropped behind): advisory, never changes what is written."""
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_once_more_than_keep_steps_are_in_flight_the_oldest_is_waited_for_and_its_pages_dropped(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(writeback, "_CALL", lambda fd, offset, length, flags: calls.append((offset, length, flags)) or 0)
    monkeypatch.setattr(writeback.os, "posix_fadvise", lambda fd, offset, length, advice: calls.append(
        ("drop", offset, length, advice)))
    tracker = writeback.Writeback(step=100, keep=2)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (100, 200, 300, 400):
            tracker.written(fd, size)
    finally:
        os.close(fd)
    start, wait = writeback._WRITE, writeback._WAIT_BEFORE | writeback._WRITE | writeback._WAIT_AFTER
    assert calls == [(0, 100, start), (100, 100, start), (200, 100, start),
                     (0, 100, wait), ("drop", 0, 100, os.POSIX_FADV_DONTNEED),
                     (300, 100, start),
                     (100, 100, wait), ("drop", 100, 100, os.POSIX_FADV_DONTNEED)]


def test_a_large_pending_file_is_stored_whole_with_write_back_on(tmp_path, monkeypatch):
    monkeypatch.setattr(writeback, "STEP", 1 << 10)
    monkeypatch.setattr(writeback, "KEEP", 2)  # steps are waited for and their pages dropped while writing
    real, started = writeback._CALL, []
    if real is not None:
        monkeypatch.setattr(writeback, "_CALL", lambda *args: started.append(args[1:4]) or real(*args))
    store = LocalStore(tmp_path / "store", UrlSigner([("k1", b"secret-one")], base_url="https://hub.test"), fsync=True)
    data = os.urandom(1 << 16)
    with store.new_file(MPACKS) as pending:
        for start in range(0, len(data), 1000):
            pending.write(data[start:start + 1000])
        digest = pending.commit()
    with store.open(MPACKS, digest) as stored:
        assert stored.read() == data
    if real is not None:  # every byte but the last step's was handed to write-back, in order, once
        started = [(offset, length) for offset, length, flags in started if flags == writeback._WRITE]  # not waits
        assert [offset for offset, _ in started] == [0] + [sum(n for _, n in started[:i]) for i in range(1, len(started))]
        assert len(data) - (1 << 10) < sum(n for _, n in started) <= len(data)
