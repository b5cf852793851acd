"""Seeded text for the synthetic history: words, and source/markdown/CSV-like lines.

A line is a pure function of its 64-bit seed (splitmix64-style mixing), so the
same seed gives the same text on any machine and Python version.
"""
from __future__ import annotations

MASK64 = (1 << 64) - 1

WORDS = ["able", "about", "above", "access", "account", "across", "action", "active", "actor", "adapter", "address", "after", "again", "agent", "align", "alpha", "amount", "anchor", "angle", "answer", "apply", "archive", "area", "array", "arrow", "asset", "async", "atlas", "audio", "author", "auto", "average", "axis", "backend", "badge", "balance", "band", "base", "batch", "beam", "before", "begin", "below", "best", "beta", "binary", "bind", "bit", "block", "blue", "board", "body", "bold", "bond", "book", "boot", "border", "bottom", "bound", "box", "branch", "bridge", "brief", "buffer", "build", "bundle", "button", "byte", "cache", "call", "canvas", "capture", "card", "carry", "case", "cast", "catalog", "cell", "center", "chain", "change", "channel", "chapter", "chart", "check", "child", "chord", "chunk", "circle", "claim", "class", "clean", "clear", "client", "clock", "clone", "close", "cloud", "cluster", "code", "color", "column", "commit", "common", "compact", "config", "connect", "context", "copy", "core", "corner", "count", "cover", "create", "cursor", "curve", "cycle", "daemon", "data", "date", "debug", "decode", "default", "delay", "delta", "depth", "design", "detail", "device", "digest", "direct", "domain", "double", "draft", "drain", "draw", "drive", "drop", "dynamic", "early", "edge", "editor", "effect", "element", "empty", "encode", "engine", "entry", "error", "event", "exact", "export", "extent", "factor", "fallback", "feature", "fetch", "field", "figure", "file", "filter", "final", "first", "flag", "flat", "float", "flow", "focus", "folder", "format", "frame", "fresh", "front", "future", "gain", "gate", "general", "global", "graph", "green", "grid", "group", "guard", "handle", "harbor", "hash", "header", "heap", "height", "helper", "history", "hold", "hook", "host", "hour", "index", "inner", "input", "insert", "install", "interval", "item", "join", "journal", "key", "kind", "label", "large", "last", "layer", "layout", "lead", "leaf", "level", "light", "limit", "line", "link", "list", "load", "local", "lock", "logic", "loop", "lower", "machine", "major", "manual", "map", "margin", "mark", "match", "matrix", "measure", "media", "memory", "merge", "message", "meter", "method", "middle", "minor", "mirror", "mode", "model", "module", "motion", "native", "network", "next", "node", "noise", "normal", "note", "number", "object", "offset", "open", "option", "order", "origin", "outer", "output", "owner", "packet", "page", "pair", "panel", "parent", "parse", "part", "patch", "path", "pattern", "peak", "phase", "pitch", "pixel", "plain", "plan", "point", "policy", "pool", "port", "post", "power", "prefix", "press", "primary", "probe", "process", "profile", "project", "prompt", "proxy", "pulse", "query", "queue", "quick", "random", "range", "rate", "reader", "record", "region", "release", "remote", "render", "report", "request", "reset", "result", "review", "rhythm", "root", "round", "route", "rule", "sample", "scale", "scene", "schema", "scope", "score", "screen", "search", "second", "section", "segment", "select", "sender", "series", "server", "session", "shadow", "shape", "share", "shift", "signal", "simple", "size", "slice", "slot", "small", "socket", "source", "space", "span", "spec", "split", "stack", "stage", "state", "static", "status", "step", "store", "stream", "string", "style", "subject", "summary", "switch", "symbol", "sync", "table", "tag", "target", "task", "tempo", "tensor", "term", "test", "text", "theme", "thread", "tile", "timer", "token", "tone", "topic", "total", "trace", "track", "train", "tree", "trigger", "tune", "type", "union", "unit", "update", "upper", "usage", "user", "value", "vector", "verse", "view", "voice", "volume", "watch", "weight", "while", "width", "window", "worker", "write", "yield", "zone", "café", "naïve", "über", "façade"]
_NW = len(WORDS)
AUTHORS = (
    "Ada Lovelace <ada@example.org>",
    "Grace Hopper <grace@example.org>",
    "Alan Turing <alan@example.org>",
    "Zoë Ångström <zoe@example.org>",
    "Ken Thompson <ken@example.org>",
    "Barbara Liskov <barbara@example.org>",
    "Edsger Dijkstra <edsger@example.org>",
)


def _mix(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit value from any integer."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def _w(h: int, shift: int) -> str:
    return WORDS[((h >> shift) & 1023) % _NW]


# -- one line of text from one 64-bit seed ------------------------------------------

def _py_line(seed: int) -> str:
    h = _mix(seed)
    t = h & 31
    a, b, c, d = _w(h, 5), _w(h, 15), _w(h, 25), _w(h, 35)
    n = (h >> 45) & 1023
    ind = "    " * (1 + ((h >> 55) & 1))
    if t < 3:
        return ""
    if t == 3:
        return f"def {a}_{b}({c}, {d}=None):"
    if t == 4:
        return f"class {a.capitalize()}{b.capitalize()}({c.capitalize()}):"
    if t == 5:
        return f"from {a}.{b} import {c}_{d}"
    if t == 6:
        return f"import {a}"
    if t < 10:
        return f"{ind}# {a} {b} {c} {d}, see {a}_{c}()"
    if t < 13:
        return f"{ind}if {a}.{b} is not None and {c} > {n}:"
    if t < 15:
        return f"{ind}for {a} in {b}_{c}({d}):"
    if t < 18:
        return f"{ind}    return {a}_{b} + {c}[{n % 16}]"
    if t < 21:
        return f"{ind}self.{a}_{b} = {c}.get({d!r}, {n})"
    if t < 24:
        return f"{ind}{a} = {b}({c}={d}, limit={n})"
    if t < 26:
        return f'{ind}raise {a.capitalize()}Error(f"{b} {c}: {{{d}}}")'
    if t < 28:
        return f"{ind}yield {a}, {b}.{c}"
    return f"{ind}{a}.{b}_{c}({d})"


def _md_line(seed: int) -> str:
    h = _mix(seed)
    t = h & 15
    if t == 0:
        return ""
    if t == 1:
        return f"## {_w(h, 4).capitalize()} {_w(h, 14)} {_w(h, 24)}"
    h2 = _mix(h)
    words = [_w(h, s) for s in (4, 14, 24, 34, 44)] + [_w(h2, s) for s in (0, 10, 20, 30, 40, 50)]
    words = words[: 6 + (h2 >> 60)]
    if t == 2:
        return "- " + " ".join(words[:5]) + "."
    text = " ".join(words)
    return text[0].upper() + text[1:] + ("." if t & 4 else ", " + _w(h2, 54) + ".")


def _csv_line(seed: int) -> str:
    h = _mix(seed)
    return (f"{_w(h, 0)},{_w(h, 10)},{(h >> 20) & 65535},"
            f"{(h >> 36) & 4095}.{(h >> 48) & 999:03d},{_w(h, 54)}")


_RENDER = {".py": _py_line, ".md": _md_line, ".csv": _csv_line}


# -- records ---------------------------------------------------------------------
