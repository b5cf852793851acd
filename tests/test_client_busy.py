"""The client waits out a busy hub: a 503 with Retry-After is asked again after that long, within a budget.

The hub is the real app on a real SQLite file and store, served over loopback
HTTP (wsgiref, one request at a time); it is made busy the way load makes it
busy — its one request builder is taken (by the test) — so the 503 and its
Retry-After are the hub's own. The client's sleep is injected: it records the
wait and, where the test says so, frees the builder, as the end of another
request's build would.
"""
from __future__ import annotations

import threading
from contextlib import ExitStack
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
import webtest

from app import create_app
from mpack.client.hub_client import MAX_RETRY_AFTER, ClientError, HubClient
from mpack.format import ids
from mpack.hub.bootstrap import build_hub
from mpack.hub.build_gate import BuildGate
from mpack.hub.settings import Settings
from mpack.hub.slots import Slots
from storage.base import BLOBS
from tests.factories import Clock, History, make_repo, make_user, push_history

PATH = "/gabriel/song"


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # the hub logs requests itself
        pass


@pytest.fixture
def served(tmp_path):
    """(hub, base URL, a pushed history) with a hub of one request builder that waits 50 ms for it."""
    server = make_server("127.0.0.1", 0, lambda environ, start: [], handler_class=_Quiet)
    base = f"http://127.0.0.1:{server.server_port}"
    hub = build_hub(Settings.for_home(tmp_path / "hub", public_url=base, job_threads=0, request_builds=1),
                    clock=Clock())
    hub.build_gate = BuildGate(hub.settings, hub.store, slot_wait=0.05)
    app = create_app(hub)
    server.set_app(app)
    owner, token = make_user(hub)
    make_repo(hub, owner)
    history = History().linear(3)
    push_history(webtest.TestApp(app), token, PATH, history)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield hub, base, history
    server.shutdown()
    server.server_close()
    hub.db.close()


class Builder:
    """The hub's one request builder, held by the test until ``free``."""

    def __init__(self, hub) -> None:
        self._stack = ExitStack()
        self._stack.enter_context(hub.build_gate.slot())

    def free(self) -> None:
        self._stack.close()


def test_a_fetch_answered_503_busy_is_asked_again_after_the_hubs_retry_after(served):
    hub, base, history = served
    builder = Builder(hub)
    waits, notices = [], []

    def sleep(seconds):
        waits.append(seconds)
        builder.free()  # another request's build ended meanwhile

    client = HubClient(base + PATH, sleep=sleep, on_busy=lambda reason, pause: notices.append((reason, pause)))
    answer = client.fetch_mpack([history.tip], [])

    assert answer["cached"] is False and answer["commit_count"] == 3
    assert waits == [1]  # the hub's Retry-After for a busy builder
    [(reason, pause)] = notices
    assert reason.endswith(": every pack builder of this worker is busy; retry shortly") and pause == 1


def test_a_download_answered_503_while_every_download_slot_is_taken_is_asked_again(served):
    hub, base, history = served
    answer = HubClient(base + PATH).fetch_mpack([history.tip], [])
    hub.download_slots = Slots(1, 1, wait=0, noun="download slot")
    reader = ExitStack()
    reader.enter_context(hub.download_slots.held("address:192.0.2.1"))  # another client reading a pack
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        reader.close()

    with HubClient(base + PATH, sleep=sleep).open_pack(answer["mpack_url"]) as stream:
        data = stream.read()
    assert waits == [1] and len(data) == answer["size_bytes"]


def test_a_hub_busy_for_longer_than_the_budget_fails_with_its_own_reason(served):
    hub, base, history = served
    builder = Builder(hub)
    waits = []
    client = HubClient(base + PATH, busy_wait=2.5, sleep=waits.append)

    with pytest.raises(ClientError) as failed:
        client.fetch_mpack([history.tip], [])

    assert waits == [1, 1]  # a third wait of 1 s would pass the 2.5 s budget: no third try
    assert failed.value.status == 503 and "busy" in failed.value.detail
    builder.free()


def test_a_503_without_retry_after_is_not_asked_again(served):
    """A blob missing from storage is 503 object_unavailable with no Retry-After: waiting would not help."""
    hub, base, history = served
    hub.store.delete(BLOBS, ids.hex_of(next(iter(history.blobs))))
    waits = []
    client = HubClient(base + PATH, sleep=waits.append)

    with pytest.raises(ClientError) as failed:
        client.fetch_mpack([history.tip], [])

    assert failed.value.status == 503 and "retry-after" not in failed.value.headers
    assert waits == []


def test_one_wait_is_capped_whatever_the_hub_asks():
    client = HubClient("http://127.0.0.1:9/o/r")
    asked = ClientError("HTTP 503: cache full", 503, {"retry-after": "86400"})
    not_digits = ClientError("HTTP 503: busy", 503, {"retry-after": "Wed, 02 Dec 2026 19:00:00 GMT"})

    assert client._busy_pause(asked) == MAX_RETRY_AFTER
    assert client._busy_pause(not_digits) is None
    assert client._busy_pause(ClientError("HTTP 500", 500, {"retry-after": "1"})) is None
