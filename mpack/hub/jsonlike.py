"""Records the hub stores as JSON must hold only what JSON holds.

Commit and snapshot records are kept verbatim (PROTOCOL.md) in JSON columns.
msgpack can carry more — bin, ext and timestamp values, integer keys, floats
that are not numbers — and a lone UTF-16 surrogate has no UTF-8 form; any of
those would fail only when the row is written (a 500), so a push is refused
up front with 422 naming the field. The record rules (``mpack.format.rules``)
check the fields the hub reads; this checks every other field it keeps.
"""
from __future__ import annotations

import json
import math

from mpack.hub.errors import InvalidRecord

_SCALARS = (str, int, float, bool, type(None))


class JsonText(str):
    """A JSON document already serialised as the hub's JSON columns store it (``models.JSONField`` keeps it as is)."""


def json_text(value: object, name: str) -> JsonText:
    """``value`` as stored JSON text (compact, keys sorted), serialised once while it is checked.

    Raises InvalidRecord naming the first field of ``value`` JSON cannot store.
    """
    try:  # the common case at C speed; the walk below only names the culprit
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"), sort_keys=True)
        text.encode("utf-8")  # a lone surrogate fails here
        return JsonText(text)
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        pass
    _find_culprit(value, name)
    raise InvalidRecord(name, "nested too deeply")


def _find_culprit(value: object, name: str) -> None:
    """Iterative, so any depth msgpack allows is walked without recursion."""
    stack = [(value, name)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InvalidRecord(where, f"keys must be strings, not {type(key).__name__}")
                _check_text(key, where)
                stack.append((child, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{index}]") for index, child in enumerate(item))
        elif not isinstance(item, _SCALARS):
            raise InvalidRecord(where, f"must be a string, number, boolean, null, list or map, not {type(item).__name__}")
        elif isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidRecord(where, "must be a finite number")


def _check_text(text: str, where: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRecord(where, "holds a lone UTF-16 surrogate, which UTF-8 cannot carry") from None
