"""Cache-hit ``POST /fetch/mpack`` under wrk, next to a bare Falcon + SQLite + HMAC route (issue 8 item 4).

A small seeded history (``bench.synth`` seed 1, scale 0.01) is pushed to a
live hub (gunicorn with the hub's configuration: its balanced gthread worker,
2 workers × 4 threads, access log on) and its tip's pack is built once. Then ``wrk -t2 -c8
--latency`` with a Lua script that POSTs the JSON body runs, interleaved,
against: the bare route of ``bench.bare_app`` (one SQLite primary-key lookup,
one HMAC, JSON; same gunicorn settings) — the anchor —, the hub's hit by
commit id, and the hub's hit by branch name, one run of each per round (the
order rotating from round to round). Each measured run lasts 6 s, 7 rounds
(``--quick``: 1 s, one round); a hit's ratio is the median over rounds of its
req/s ÷ the anchor's req/s in the same round: this kind of machine's speed
drifts by 2× within minutes (CPU steal, memory reclaim), and a ratio taken
within one round cancels what a ratio of medians taken minutes apart does
not. Target ≥ 0.70 for both hits. Needs ``wrk`` (Debian package).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.bare_app import create_db
from bench.live_hub import LiveHub, live_hub
from bench.synth import Synth
from bench.util import Table, free_port, median, wait_for_port
from bench.wire import batches, call, push_batch

ROOT = Path(__file__).resolve().parent.parent
SEED, SCALE = 1, 0.01
SECONDS, QUICK_SECONDS = 6, 1
ROUNDS, QUICK_ROUNDS = 7, 1
TARGET = 0.70
PATH = "/bench/hit"

LUA = """wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
"""


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(output: str) -> WrkResult:
    """req/s and latency percentiles from ``wrk --latency`` output; errors if any request failed."""
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if bad or "Socket errors" in output:
        raise RuntimeError(f"wrk saw failed requests:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))
    return WrkResult(rate, p50, p99)


def run_wrk(url: str, body: dict, seconds: int, work: Path) -> WrkResult:
    script = work / f"post-{abs(hash(url + json.dumps(body)))}.lua"
    script.write_text(LUA.format(body=json.dumps(json.dumps(body))))
    out = subprocess.run(["wrk", "-t2", "-c8", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True, timeout=seconds + 60)
    return parse_wrk(out.stdout)


class BareServer:
    """``bench.bare_app`` under gunicorn in a child process."""

    def __init__(self, work: Path) -> None:
        self.db = str(work / "bare.sqlite")
        self.key = create_db(self.db)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/bare"
        self.log = open(work / "bare.log", "wb")  # noqa: SIM115 — closed in __exit__
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> BareServer:
        env = {**os.environ, "MPACKHUB_HOME": str(Path(self.db).parent / "bare-home")}  # config_values() makes dirs there
        self.process = subprocess.Popen([sys.executable, "-m", "bench.bare_app", self.db, f"127.0.0.1:{self.port}"],
                                        cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout=30)
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def seed(hub: LiveHub) -> str:
    """Push the history, build its tip's pack; → the tip's commit id."""
    token = hub.create_user("bench")
    hub.create_repo(token, "hit")
    for batch in batches(Synth(SEED, SCALE), 50):
        push_batch(hub, token, PATH, batch)
    tip = call(hub, "GET", f"{PATH}/refs", None, token)["branch_heads"]["main"]
    for want in (tip, "main"):
        answer = call(hub, "POST", f"{PATH}/fetch/mpack", {"want": [want], "have": []}, token)
    if not answer["cached"]:
        raise RuntimeError("the second fetch of the tip was not a cache hit")
    return tip


def measure_all(work: Path, seconds: int, rounds: int) -> dict[str, list[WrkResult]]:
    results: dict[str, list[WrkResult]] = {"bare": [], "id": [], "branch": []}
    with live_hub(work / "hub", workers=2) as hub, BareServer(work) as bare:
        tip = seed(hub)
        targets = {"bare": (bare.url, {"key": bare.key}),
                   "id": (hub.url + f"{PATH}/fetch/mpack", {"want": [tip], "have": []}),
                   "branch": (hub.url + f"{PATH}/fetch/mpack", {"want": ["main"], "have": []})}
        for url, body in targets.values():  # warm every worker and thread
            run_wrk(url, body, 1, work)
        names = list(targets)
        for n in range(rounds):
            for name in names[n % 3:] + names[:n % 3]:  # each target goes first, second and third in turn
                url, body = targets[name]
                results[name].append(run_wrk(url, body, seconds, work))
    return results


def hit_table(results: dict[str, list[WrkResult]], seconds: int) -> Table:
    rounds = len(results["bare"])
    title = (f"cache-hit POST /fetch/mpack vs a bare Falcon route (1 SQLite PK lookup + 1 HMAC + JSON); gunicorn, the hub's "
             f"balanced gthread worker, 2 workers × 4 threads, access log on; wrk -t2 -c8 -d{seconds}s, {rounds} interleaved round(s), medians; "
             f"ratio = median of the per-round ratios; target ratio ≥ {TARGET}")
    table = Table("measurement", "req/s", "p50 ms", "p99 ms", "ratio", "target", title=title)
    labels = {"bare": "bare Falcon + SQLite PK + HMAC route (anchor)", "id": "hub hit, want = commit id",
              "branch": "hub hit, want = branch name"}
    for name, label in labels.items():
        rate = median(r.requests_per_s for r in results[name])
        ratio = paired_ratio(results, name)
        verdict = "anchor" if name == "bare" else ("pass" if ratio >= TARGET else f"miss by {TARGET - ratio:.2f}")
        table.add(label, rate, median(r.p50_ms for r in results[name]), median(r.p99_ms for r in results[name]),
                  ratio, verdict)
    return table


def measure(scale: float | None = None, quick: bool = False) -> tuple[dict[str, list[WrkResult]], int]:
    """→ (wrk results by target: bare, id, branch; seconds per run). ``scale`` sets the seconds per run."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (Debian package wrk)")
    seconds = max(1, round(scale)) if scale else (QUICK_SECONDS if quick else SECONDS)
    with tempfile.TemporaryDirectory(prefix="bench-hit-") as tmp:
        return measure_all(Path(tmp), seconds, QUICK_ROUNDS if quick else ROUNDS), seconds


def paired_ratio(results: dict[str, list[WrkResult]], name: str) -> float:
    """The median over rounds of ``name``'s req/s ÷ the anchor's in the same round."""
    return median(ours.requests_per_s / bare.requests_per_s
                  for ours, bare in zip(results[name], results["bare"], strict=True))


def ratios(results: dict[str, list[WrkResult]]) -> dict[str, tuple[float, float, float]]:
    """(anchor median req/s, median req/s, paired ratio) by target name."""
    anchor = median(r.requests_per_s for r in results["bare"])
    return {name: (anchor, median(r.requests_per_s for r in runs), paired_ratio(results, name))
            for name, runs in results.items()}


def run(scale: float | None = None, quick: bool = False) -> list[Table]:
    results, seconds = measure(scale, quick)
    return [hit_table(results, seconds)]
