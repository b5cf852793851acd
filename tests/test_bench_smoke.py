"""Smoke tests for ``python -m bench``: every registered benchmark runs at its tiniest size
and returns tables with the expected columns and positive figures; the results document
is updated one section at a time."""
from __future__ import annotations

import pytest

from bench import report
from bench.__main__ import main
from bench.registry import BENCHMARKS, load

pytestmark = pytest.mark.e2e  # push and prebuild start a real gunicorn on 127.0.0.1

# others: their own --quick default
TINY_SCALE = {"push": 0.01, "prebuild": 0.01, "gc": 0.1, "fetch": 0.01, "clone-branches": 0.005}
COLUMNS = {
    "push": [["stage", "seconds", "share %", "MB/s", "commits/s"], ["measurement", "seconds", "MB/s", "ratio"]],
    "prebuild": [["measurement", "median s", "min s", "max s", "ratio"],
                 ["measurement", "jobs", "seconds", "jobs/s", "ratio"]],
    "gc": [["measurement", "rows deleted", "packs deleted", "seconds", "rows/s", "ratio"]],
}


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_each_benchmark_runs_at_its_tiniest(name):
    tables = load(name).run(TINY_SCALE.get(name), True)
    assert tables
    if name in COLUMNS:
        assert [t.columns for t in tables] == COLUMNS[name]
    for table in tables:
        assert table.title and table.rows
        for row in table.rows:
            assert all(number(cell) > 0 for cell in row[1:]), row
    for table in tables:
        if "ratio" in table.columns:
            assert number(table.rows[0][table.columns.index("ratio")]) == 1.0  # the anchor row comes first


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
