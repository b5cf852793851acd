"""SingleFlight: one run per key at a time, its result every waiting caller's — and its error, unless the
error was the leader's own refusal (``unshared``: its client's share of the builders), which the others
do not inherit.

Real threads and the real lock files; a follower is known to be waiting when it waits on the leader's
``done`` event (``WaitingEvent`` says so), so nothing here sleeps.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mpack.hub import singleflight
from mpack.hub.errors import ClientShareTaken, ServerBusy
from mpack.hub.singleflight import SingleFlight


class WaitingEvent(threading.Event):
    """An event that tells ``someone_waits`` when a thread starts waiting on it."""

    someone_waits = threading.Event()

    def wait(self, timeout=None):
        WaitingEvent.someone_waits.set()
        return super().wait(timeout)


class WatchedCall(singleflight._Call):
    def __init__(self) -> None:
        super().__init__()
        self.done = WaitingEvent()


@pytest.fixture
def flights(tmp_path, monkeypatch):
    WaitingEvent.someone_waits = threading.Event()
    monkeypatch.setattr(singleflight, "_Call", WatchedCall)
    return SingleFlight(tmp_path / "locks")


def lead_then_follow(flights: SingleFlight, leader_fn, follower_fn, **options):
    """Run a leader that blocks until a follower waits on it; → (leader's outcome, follower's outcome)."""
    release = threading.Event()

    def leader():
        release.wait(10)
        return leader_fn()

    with ThreadPoolExecutor(2) as pool:
        led = pool.submit(flights.do, "key", leader, **options)
        deadline = time.monotonic() + 10
        while not flights._calls and time.monotonic() < deadline:  # until the leader has registered its call
            time.sleep(0.001)
        followed = pool.submit(flights.do, "key", follower_fn, **options)
        assert WaitingEvent.someone_waits.wait(10)
        release.set()
        return outcome(led), outcome(followed)


def outcome(future):
    try:
        return future.result(10)
    except BaseException as exc:  # noqa: BLE001 — the outcome is what the test compares
        return exc


def test_a_follower_gets_the_leaders_result_without_running(flights):
    ran = []
    led, followed = lead_then_follow(flights, lambda: "built", lambda: ran.append(1) or "again")
    assert (led, followed, ran) == ("built", "built", [])


def test_a_leaders_failure_is_the_followers_too(flights):
    ran = []

    def fails():
        raise ServerBusy("every pack builder of this worker is busy")

    led, followed = lead_then_follow(flights, fails, lambda: ran.append(1) or "again", unshared=ClientShareTaken)
    assert isinstance(led, ServerBusy) and followed is led and ran == []


def test_a_refusal_of_the_leaders_client_is_not_the_followers(flights):
    def refused():
        raise ClientShareTaken("this client holds 1 pack builder(s) of this worker already")

    led, followed = lead_then_follow(flights, refused, lambda: "built by the follower", unshared=ClientShareTaken)
    assert isinstance(led, ClientShareTaken) and followed == "built by the follower"
    assert flights._calls == {}
