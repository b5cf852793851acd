"""Writers racing on one database (any backend; on PostgreSQL nothing serialises them for free):
two pushes moving one branch from the same head, two first pushes creating one branch."""
from __future__ import annotations

import copy
import threading

from tests.factories import History, push_history, unpack, wire

PATH = "/gabriel/song"


def _race_final_pushes(app, token: str, histories: list[History]) -> dict[str, int]:
    """Upload both histories' objects, then send both ``/push`` calls at the same instant → {tip: status}."""
    for history in histories:
        objects = [{"object_id": o, "content": c} for o, c in history.blobs.items()]
        wire(app, "POST", f"{PATH}/push/objects", {"objects": objects}, token=token, status=200)
    barrier = threading.Barrier(len(histories))
    statuses: dict[str, int] = {}

    def push(history: History) -> None:
        bundle = history.bundle(with_objects=False)
        barrier.wait()
        reply = wire(app, "POST", f"{PATH}/push", {"bundle": bundle, "branch": "main", "force": False}, token=token)
        statuses[history.tip] = reply.status_int

    threads = [threading.Thread(target=push, args=(h,)) for h in histories]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return statuses


def _head(app, token: str) -> str:
    return unpack(wire(app, "GET", f"{PATH}/refs", token=token, status=200))["branch_heads"]["main"]


def test_two_pushes_from_the_same_head_one_wins_the_other_is_non_fast_forward(app, hub, owner, repo):
    token = owner[1]
    base = History().linear(2)
    push_history(app, token, PATH, base)
    for round_ in range(3):
        left, right = copy.deepcopy(base), copy.deepcopy(base)
        left.commit({f"left{round_}.txt": b"left"})
        right.commit({f"right{round_}.txt": b"right"})
        statuses = _race_final_pushes(app, token, [left, right])
        assert sorted(statuses.values()) == [200, 409], statuses
        winner = left if statuses[left.tip] == 200 else right
        assert _head(app, token) == winner.tip  # the loser was refused, not silently overwritten
        base = winner


def test_two_first_pushes_of_one_branch_create_it_once(app, hub, owner, repo):
    token = owner[1]
    left, right = History(), History()
    left.commit({"left.txt": b"left"})
    right.commit({"right.txt": b"right"})
    statuses = _race_final_pushes(app, token, [left, right])
    assert sorted(statuses.values()) == [200, 409], statuses
    assert _head(app, token) == (left if statuses[left.tip] == 200 else right).tip
