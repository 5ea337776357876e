"""Smoke tests of benchmarks/served_certify.py's pure parts: options and the table."""

from __future__ import annotations


def test_quick_options(served_certify) -> None:
    args = served_certify.parse_args(["--quick"])
    assert (args.n, args.plain, args.repeats) == ([20, 50], 4, 2)
    assert served_certify.parse_args([]).n == [100, 1000]


def test_table_has_a_row_per_runtime(served_certify) -> None:
    rows = {
        "plain_ms": 9.5,
        "certify": {"100": 120.0, "1000": 1100.0},
        "beside": {
            "n": 1000,
            "plain_alone_ms": {"median": 30.0, "max": 40.0},
            "plain_after_0ms": {"median": 600.0, "max": 1200.0, "certifying_ms": 1150.0},
            "plain_after_20ms": {"median": 35.0, "max": 50.0, "certifying_ms": 1100.0},
        },
    }
    table = served_certify.render({"n": [100, 1000], "runtimes": {"torchserve": rows}})
    lines = table.splitlines()
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert lines[2] == "| torchserve | 9.5 | 120 | 1100 | 30 / 40 | 600 / 1200 | 35 / 50 |"
