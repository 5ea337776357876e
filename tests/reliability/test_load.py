"""Load tests with benchmarks/load_test.py against this folder's TorchServe (loopback only).

The default suite runs a short load (8 clients for 10 s); the ``slow`` one is the full run
(32 clients for 60 s; TRUSTGC_LOAD_CLIENTS / TRUSTGC_LOAD_SECONDS change it) whose numbers are
recorded in docs/reliability.md.  Both require every request answered, no 5xx, no timeout,
every broken image its 4xx, and gc_decisions_total grown by exactly the decisions seen.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import pytest
from reliability_support import load_benchmark

pytestmark = pytest.mark.integration


def target_of(served):
    return load_benchmark().Target(
        served.inference_url, served.metrics_url, served.token, served.model
    )


def run(served, clients: int, seconds: float, invalid_every: int):
    lt = load_benchmark()
    report = lt.load_test(
        target_of(served),
        clients=clients,
        duration=seconds,
        timeout=30.0,
        invalid_every=invalid_every,
        bodies=lt.fashion_bodies(128),
    )
    summary = asdict(report) | {"ok": report.ok}
    print("\n" + json.dumps(summary, indent=1))
    return report, summary


def test_short_load(rel_server) -> None:
    workers = rel_server.worker_pids()
    report, _ = run(rel_server, clients=8, seconds=10, invalid_every=10)
    assert report.ok, report.failures
    assert report.requests >= 8
    assert report.client_decisions["invalid_input"] > 0  # the error path was loaded too
    assert report.server_decisions is not None
    assert report.errors == {}
    assert rel_server.worker_pids() == workers


@pytest.mark.slow
def test_full_load(rel_server, tmp_path) -> None:
    clients = int(os.environ.get("TRUSTGC_LOAD_CLIENTS", "32"))
    seconds = float(os.environ.get("TRUSTGC_LOAD_SECONDS", "60"))
    report, summary = run(rel_server, clients=clients, seconds=seconds, invalid_every=50)
    (tmp_path / "load.json").write_text(json.dumps(summary, indent=2))
    assert report.ok, report.failures
    assert report.errors == {}
