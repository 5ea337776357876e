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


def test_registration_options_and_table(served_certify) -> None:
    args = served_certify.parse_args(["--registration", "--quick"])
    assert args.registration and (args.repeats, args.starts) == (2, 1)
    assert (
        served_certify.parse_args([]).starts == 2 and not served_certify.parse_args([]).registration
    )

    def start(on: bool, ready: float) -> dict:
        rss = {"fashion_mnist": [300.0, 310.0]} | ({"fashion_mnist_certify": [290.0]} if on else {})
        return {"certify_registration": on, "ready_s": ready, "worker_rss_mb": rss}

    rows = {
        "n": 1000,
        "plain_alone_ms": {"median": 30.0, "max": 40.0},
        "shared_batch": {"median": 45.0, "max": 1300.0, "certifying_ms": 1000.0},
        "certify_registration": {"median": 33.0, "max": 50.0, "certifying_ms": 1010.0},
        "starts": {
            "with_certify_registration": [start(True, 8.0), start(True, 9.0)],
            "without": [start(False, 6.0), start(False, 7.0)],
        },
    }
    lines = served_certify.render_registration(rows).splitlines()
    assert lines[3] == "| certificate in the batched registration (old) | 45 | 1300 | 1000 |"
    assert lines[4] == "| certificate on fashion_mnist_certify | 33 | 50 | 1010 |"
    assert lines[8] == (
        "| with_certify_registration | 8.5 | fashion_mnist 305 x 2, fashion_mnist_certify 290 x 1 |"
    )
    assert lines[9] == "| without | 6.5 | fashion_mnist 305 x 2 |"
