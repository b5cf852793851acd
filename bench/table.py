"""Issue 8's table: every row next to its anchor measured in the same run, with its target and pass/miss.

``python -m bench all`` runs ``fetch`` (1× and 4×: cold builds vs sha256,
pack size, clones vs ``git clone`` over smart HTTP with client peak RSS,
incremental fetches), ``hit`` (wrk: cache hits vs a bare Falcon route) and
``push`` (push end to end vs plain fsync'd writes), then prints the summary
first and every benchmark's own tables after it. ``--scale`` scales the
fetch history (default 1: ~2,000 commits, ~347 MB of blobs; 4× is run too);
``--quick`` makes every part small. A miss says by how much; why, and what
would close it, is in docs/benchmarks.md under the table.
"""
from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

from bench import fetch_path, hit, push
from bench.util import MB, Table


@dataclass(frozen=True)
class Target:
    text: str
    ok: Callable[[float, float], bool]
    bound: float

    def verdict(self, value: float) -> str:
        if self.ok(value, self.bound):
            return "pass"
        return f"miss by {abs(value - self.bound):.2f} ({value / self.bound:.2f}× the bound)"


def at_least(bound: float) -> Target:
    return Target(f"≥ {bound:g}", operator.ge, bound)


def at_most(bound: float) -> Target:
    return Target(f"≤ {bound:g}", operator.le, bound)


def summary(fetch: fetch_path.FetchResults, hits: dict[str, tuple[float, float, float]], pushed: push.PushResults) -> Table:
    table = Table("measurement (issue 8)", "anchor", "ours", "ratio / value", "target", "verdict",
                  title="issue 8: each figure next to its anchor, measured in this run")

    def row(what: str, anchor: object, ours: object, value: float, target: Target) -> None:
        table.add(what, anchor, ours, value, target.text, target.verdict(value))

    one, four = fetch.builds[1], fetch.builds[4]
    for factor, build in ((1, one), (4, four)):
        row(f"cold build {factor}×: MB/s of blob content ÷ hashlib sha256 MB/s", f"{fetch.sha_mbps:,.0f} MB/s",
            f"{build.mbps:,.1f} MB/s", build.mbps / fetch.sha_mbps, at_least(0.30))
    if fetch.copy_mbps and fetch.disk_mbps:  # what bounds the build on this machine, for reading the two rows above
        table.add("(for reading it) memory copy MB/s ÷ hashlib sha256 MB/s", f"{fetch.sha_mbps:,.0f} MB/s",
                  f"{fetch.copy_mbps:,.0f} MB/s", fetch.copy_mbps / fetch.sha_mbps, "—", "a physical limit")
        table.add("(for reading it) sequential write + fsync MB/s ÷ hashlib sha256 MB/s", f"{fetch.sha_mbps:,.0f} MB/s",
                  f"{fetch.disk_mbps:,.0f} MB/s", fetch.disk_mbps / fetch.sha_mbps, "—", "a physical limit")
    row("build time 4× ÷ (4 × build time 1×)", f"4 × {one.seconds:.2f} s", f"{four.seconds:.2f} s",
        four.seconds / (4 * one.seconds), at_most(1.15))
    for factor, build in ((1, one), (4, four)):
        row(f"pack bytes ÷ blob bytes, {factor}×", f"{build.blob_bytes / MB:,.1f} MB blobs",
            f"{build.pack_bytes / MB:,.1f} MB pack", build.pack_bytes / build.blob_bytes, at_most(1.10))
    clone = fetch.clones[1]
    if clone.git_s is not None:
        row("`mpackhub clone` wall ÷ `git clone` over smart HTTP (with checkout), 1×", f"{clone.git_s:.2f} s",
            f"{clone.ours_s:.2f} s", clone.ours_s / clone.git_s, at_most(1.00))
    for factor, run in fetch.clones.items():
        row(f"client peak RSS during `mpackhub clone`, {factor}× (MiB)", "—", f"{run.ours_s:.1f} s wall",
            run.ours_rss_mb, at_most(150))
    cold1, cold4 = fetch.incremental[1][0], fetch.incremental[4][0]
    row("incremental fetch of one new commit, cold, 4× ÷ 1× (server time)", f"{cold1 * 1000:.1f} ms",
        f"{cold4 * 1000:.1f} ms", cold4 / cold1, at_most(1.20))
    for name, label in (("id", "commit id"), ("branch", "branch name")):
        anchor, ours, ratio = hits[name]  # ratio: the median of per-round ratios (bench.hit)
        row(f"cache-hit `POST /fetch/mpack` by {label}, req/s ÷ bare Falcon route (wrk -t2 -c8)",
            f"{anchor:,.0f} req/s", f"{ours:,.0f} req/s", ratio, at_least(0.70))
    mb = pushed.history.blob_bytes / MB
    plain, total = mb / pushed.plain_s, mb / pushed.http.times.total
    row("push throughput end to end ÷ plain open/write/fsync per blob", f"{plain:,.1f} MB/s", f"{total:,.1f} MB/s",
        total / plain, at_least(0.60))
    store = mb / pushed.store_s
    row("(for reading it) LocalStore.put_many alone ÷ plain fsync'd writes", f"{plain:,.1f} MB/s",
        f"{store:,.1f} MB/s", store / plain, at_least(0.60))
    return table


def run(scale: float | None = None, quick: bool = False) -> list[Table]:
    fetch = fetch_path.measure_all(scale, quick)
    hit_results, seconds = hit.measure(None, quick)
    pushed = push.measure(None, quick)
    return [summary(fetch, hit.ratios(hit_results), pushed), *fetch.tables(), hit.hit_table(hit_results, seconds),
            *pushed.tables()]
