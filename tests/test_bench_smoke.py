"""Smoke tests for ``python -m bench``: every registered benchmark runs at its tiniest size
and returns tables with the expected columns and positive figures; the results document
is updated one section at a time."""
from __future__ import annotations

import shutil

import pytest

from bench import fetch_path, hit, push, report, table
from bench.__main__ import main
from bench.registry import BENCHMARKS, load
from bench.util import Table

pytestmark = pytest.mark.e2e  # push and prebuild start a real gunicorn on 127.0.0.1

# others: their own --quick default
TINY_SCALE = {"push": 0.01, "prebuild": 0.01, "gc": 0.1, "fetch": 0.01, "clone-branches": 0.005, "scaleout": 0.005}
# "all" runs fetch, hit and push, each smoke-tested on its own; its summary is tested below on known figures.
SMOKED = [name for name in BENCHMARKS if name != "all"]
COLUMNS = {
    "push": [["stage", "seconds", "share %", "MB/s", "commits/s"], ["measurement", "seconds", "MB/s", "ratio"]],
    "prebuild": [["measurement", "median s", "min s", "max s", "ratio"],
                 ["measurement", "jobs", "seconds", "jobs/s", "ratio"]],
    "gc": [["measurement", "rows deleted", "packs deleted", "seconds", "rows/s", "ratio"]],
    "scaleout": [["measurement", "requests", "seconds", "req/s", "ratio"],
                 ["measurement", "pack MB", "clone median s", "download MB/s", "ratio"]],
    "hit": [["measurement", "req/s", "p50 ms", "p99 ms", "ratio", "target"]],
}


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def numeric(cell: str) -> bool:
    try:
        number(cell)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("name", SMOKED)
def test_each_benchmark_runs_at_its_tiniest(name):
    if name == "hit" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (Debian package wrk; .ci/run installs it)")
    tables = load(name).run(TINY_SCALE.get(name), True)
    assert tables
    if name in COLUMNS:
        assert [t.columns for t in tables] == COLUMNS[name]
    for result in tables:
        assert result.title and result.rows
        for row in result.rows:
            assert all(number(cell) > 0 for cell in row[1:] if numeric(cell)), row
            assert any(numeric(cell) for cell in row[1:]), row
    for result in tables:
        if "ratio" in result.columns:
            assert number(result.rows[0][result.columns.index("ratio")]) == 1.0  # the anchor row comes first


def test_the_issue_8_table_has_every_row_with_target_and_verdict():
    fetch = fetch_path.FetchResults(1.0, sha_mbps=1000.0)
    fetch.builds = {1: fetch_path.Build(1.0, 110 * 10**6, 100 * 10**6, 50.0, 2000),
                    4: fetch_path.Build(5.0, 500 * 10**6, 400 * 10**6, 60.0, 8000)}
    fetch.incremental = {1: (0.010, 0.001), 4: (0.011, 0.001)}
    fetch.clones = {1: fetch_path.CloneRun(2.0, 120.0, 2.5), 4: fetch_path.CloneRun(9.0, 180.0)}
    history = push.History(0.01, [])
    history.steps = []
    pushed = push.PushResults(history, push.HttpRun(push.PushTimes(0.1, 0.5, 0.1), 1, 0.1), 0.4, 0.5, 1)
    pushed.history = type("H", (), {"blob_bytes": 50_000_000})()
    hits = {"bare": (3000.0, 3000.0, 1.0), "id": (3000.0, 2400.0, 0.8), "branch": (3000.0, 1800.0, 0.6)}
    summary = table.summary(fetch, hits, pushed)
    rows = {row[0]: row for row in summary.rows}
    verdicts = [row[-1] for row in summary.rows]
    assert len(rows) == 13 and all(v == "pass" or v.startswith("miss by") for v in verdicts)
    assert rows["cold build 1×: MB/s of blob content ÷ hashlib sha256 MB/s"][-1].startswith("miss by 0.20")
    assert rows["build time 4× ÷ (4 × build time 1×)"][3] == "1.25"
    assert rows["pack bytes ÷ blob bytes, 1×"][-1] == "pass"
    assert rows["client peak RSS during `mpackhub clone`, 4× (MiB)"][-1].startswith("miss by 30")
    assert rows["incremental fetch of one new commit, cold, 4× ÷ 1× (server time)"][-1] == "pass"
    by_branch = rows["cache-hit `POST /fetch/mpack` by branch name, req/s ÷ bare Falcon route (wrk -t2 -c8)"]
    assert by_branch[3] == "0.6" and by_branch[-1].startswith("miss by 0.10")
    assert rows["push throughput end to end ÷ plain open/write/fsync per blob"][3] == "0.714"
    assert isinstance(summary, Table) and "| verdict" in summary.render()


def test_the_issue_8_table_shows_the_builds_physical_limits_when_measured():
    fetch = fetch_path.FetchResults(1.0, sha_mbps=1000.0, copy_mbps=800.0, disk_mbps=500.0)
    fetch.builds = {1: fetch_path.Build(1.0, 110 * 10**6, 100 * 10**6, 50.0, 2000),
                    4: fetch_path.Build(4.0, 440 * 10**6, 400 * 10**6, 60.0, 8000)}
    fetch.incremental = {1: (0.010, 0.001), 4: (0.011, 0.001)}
    fetch.clones = {1: fetch_path.CloneRun(2.0, 120.0, 2.5), 4: fetch_path.CloneRun(9.0, 140.0)}
    pushed = push.PushResults(push.History(0.01, []), push.HttpRun(push.PushTimes(0.1, 0.5, 0.1), 1, 0.1), 0.4, 0.5, 1)
    pushed.history = type("H", (), {"blob_bytes": 50_000_000})()
    hits = {"bare": (3000.0, 3000.0, 1.0), "id": (3000.0, 2400.0, 0.8), "branch": (3000.0, 2400.0, 0.8)}
    rows = {row[0]: row for row in table.summary(fetch, hits, pushed).rows}
    assert len(rows) == 15
    assert rows["(for reading it) memory copy MB/s ÷ hashlib sha256 MB/s"][3:] == ["0.8", "—", "a physical limit"]
    disk = rows["(for reading it) sequential write + fsync MB/s ÷ hashlib sha256 MB/s"]
    assert disk[3:] == ["0.5", "—", "a physical limit"]
    build_rows = [row[0] for row in fetch.build_table().rows]
    assert build_rows[-2:] == ["(physical limit) memory copy of 256 MiB",
                               "(physical limit) sequential write + fsync, 1× pack size"]


def test_wrk_output_is_parsed_and_failed_requests_refused():
    out = """Running 1s test @ http://127.0.0.1:1/bare
  Latency Distribution
     50%    1.17ms
     75%    2.00ms
     90%    3.00ms
     99%   12.50ms
  5000 requests in 1.00s, 1.00MB read
Requests/sec:   4998.21
"""
    parsed = hit.parse_wrk(out)
    assert (parsed.requests_per_s, parsed.p50_ms, parsed.p99_ms) == (4998.21, 1.17, 12.5)
    with pytest.raises(RuntimeError, match="failed requests"):
        hit.parse_wrk(out + "  Non-2xx or 3xx responses: 3\n")


def test_a_section_is_replaced_and_the_rest_kept():
    doc = report.INTRO + "\n<!-- bench:a -->\nold a\n<!-- /bench:a -->\n\n<!-- bench:b -->\nold b\n<!-- /bench:b -->\n"
    updated = report.replace_section(doc, "a", "new a\n")
    assert "new a" in updated and "old a" not in updated
    assert updated.startswith(report.INTRO) and "<!-- bench:b -->\nold b\n<!-- /bench:b -->" in updated
    assert report.replace_section(updated, "a", "new a\n") == updated
    appended = report.replace_section(updated, "c", "c here")
    assert appended.startswith(updated.rstrip()) and appended.endswith("<!-- bench:c -->\nc here\n<!-- /bench:c -->\n")


def test_the_command_prints_and_writes_the_document(tmp_path, capsys):
    doc = tmp_path / "benchmarks.md"
    assert main(["gc", "--quick", "--scale", "0.1", "--doc", str(doc)]) == 0
    printed = capsys.readouterr().out
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and "<!-- bench:gc -->" in text and "<!-- bench:push -->" not in text
    assert "## gc" in printed and "python -m bench gc --scale 0.1 --quick" in text and "GiB RAM" in text


def test_unknown_benchmarks_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["nope", "--no-doc"])
    assert "unknown benchmark" in capsys.readouterr().err


def test_a_hit_ratio_is_the_median_of_per_round_ratios_not_a_ratio_of_medians():
    def runs(*rates):
        return [hit.WrkResult(rate, 1.0, 2.0) for rate in rates]

    # The machine slowed down in round 2: a ratio of medians (2000 / 3000) would say 0.67.
    results = {"bare": runs(3000, 1000, 3000), "id": runs(2400, 800, 2000), "branch": runs(2400, 800, 2400)}
    assert hit.paired_ratio(results, "id") == pytest.approx(0.8)
    assert hit.ratios(results)["id"] == (3000, 2000, pytest.approx(0.8))
