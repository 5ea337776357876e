"""Smoke tests of benchmarks/serve_load.py's pure parts (no TorchServe, no timings asserted)."""

from __future__ import annotations

import math

import numpy as np
import pytest

PRODUCTION = """# Per-model settings
minWorkers: 2
maxWorkers: 2
batchSize: 16
maxBatchDelay: 5        # milliseconds a batch waits to fill
responseTimeout: 60     # seconds
trustgc:
  torch_threads: 1
"""


def test_model_config_text_replaces_batching_and_keeps_the_rest(serve_load) -> None:
    text = serve_load.model_config_text(PRODUCTION, 1, 7)
    assert "batchSize: 1\n" in text and "batchSize: 16" not in text
    assert "maxBatchDelay: 7" in text and "# milliseconds a batch waits to fill" in text
    assert "minWorkers: 2" in text and "  torch_threads: 1" in text
    assert serve_load.model_config_text(PRODUCTION, 16).count("maxBatchDelay: 5") == 1
    added = serve_load.model_config_text("minWorkers: 1\n", 4, 10)
    assert "batchSize: 4" in added and "maxBatchDelay: 10" in added


def test_production_model_config_parses_to_the_new_integers(serve_load, tmp_path) -> None:
    """Trailing comments stay comments: "maxBatchDelay: 5# ..." would be a YAML string."""
    yaml = pytest.importorskip("yaml")
    text = serve_load.PRODUCTION_MODEL_CONFIG.read_text()
    for source in (text, PRODUCTION):
        changed = serve_load.model_config_text(source, 1, 7)
        parsed = yaml.safe_load(changed)
        assert parsed["batchSize"] == 1 and parsed["maxBatchDelay"] == 7
        assert parsed["minWorkers"] == 2 and parsed["trustgc"]["torch_threads"] == 1
    path = tmp_path / "config.yaml"
    path.write_text(serve_load.model_config_text(text, 16, 5))
    serve_load.check_model_config(path, 16, 5)
    path.write_text("batchSize: 16\nmaxBatchDelay: 5# comment\n")
    with pytest.raises(ValueError, match="maxBatchDelay"):
        serve_load.check_model_config(path, 16, 5)


def test_summarize_percentiles_and_throughput(serve_load) -> None:
    summary = serve_load.summarize([float(v) for v in range(1, 101)], errors=2, elapsed_s=4.0)
    assert summary["requests"] == 100 and summary["errors"] == 2
    assert summary["throughput"] == pytest.approx(25.0)
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p99_ms"] == pytest.approx(np.percentile(np.arange(1, 101), 99))
    empty = serve_load.summarize([], errors=3, elapsed_s=1.0)
    assert empty["requests"] == 0 and math.isnan(empty["p95_ms"])


def test_ratio_and_names(serve_load) -> None:
    assert serve_load.ratio(50.0, 100.0) == pytest.approx(0.5)
    assert math.isnan(serve_load.ratio(1.0, 0.0))
    assert math.isnan(serve_load.ratio(float("nan"), 1.0))
    assert serve_load.model_name("gc", 16) == "gc_batch16"


def test_free_ports_are_distinct(serve_load) -> None:
    ports = serve_load.free_ports(serve_load.PORT_NAMES)
    assert set(ports) == set(serve_load.PORT_NAMES)
    assert len(set(ports.values())) == len(ports)


def test_drive_counts_answers_and_errors(serve_load) -> None:
    calls = []

    def send(image: bytes):
        calls.append(image)
        return len(calls) % 5 != 0, b'{"ok": true}'

    result, elapsed, cpu = serve_load.drive(send, [b"a", b"b", b"c"], concurrency=3, duration=0.05)
    assert len(result.latencies_ms) + result.errors == len(calls) > 0
    assert result.first_answer == b'{"ok": true}' and elapsed > 0 and cpu >= 0

    def broken(image: bytes):
        raise ConnectionError("refused")

    failed, _, _ = serve_load.drive(broken, [b"a"], concurrency=2, duration=0.02)
    assert failed.errors > 0 and not failed.latencies_ms
    assert "refused" in failed.error_sample


def _cell(protocol: str, batch: int, concurrency: int, gc: float, base: float) -> dict:
    def side(throughput: float) -> dict:
        return {
            "throughput": throughput,
            "p50_ms": 10.0,
            "p95_ms": 20.0,
            "p99_ms": 30.0,
            "errors": 0,
            "client_cpu": 0.1,
        }

    return {
        "protocol": protocol,
        "batch_size": batch,
        "concurrency": concurrency,
        "gc": side(gc),
        "baseline": side(base),
        "ratio": gc / base,
    }


def test_render_makes_one_row_per_cell(serve_load) -> None:
    result = {
        "machine": "test CPU, 2 logical CPUs",
        "duration": 15.0,
        "warmup": 3.0,
        "workers": "2 workers",
        "load_before": 0.5,
        "load_after": 1.0,
        "cells": [_cell("REST", 1, 1, 40.0, 100.0), _cell("gRPC", 16, 32, 90.0, 100.0)],
    }
    text = serve_load.render(result)
    rows = [line for line in text.splitlines() if line.startswith("| REST") or "| gRPC" in line]
    assert len(rows) == 2
    assert "**0.40x**" in text and "**0.90x**" in text
    assert "met in 1 of 2 cells" in text


def test_answer_check_tells_neutral_from_real_trust_fields(serve_load) -> None:
    from serving.schema import (
        Attack,
        ClassificationResponse,
        ClassProbability,
        LogLikelihood,
        ModelInfo,
        Typicality,
    )

    def response(statistic: str, p: float) -> bytes:
        top = ClassProbability(label="a", index=0, probability=1.0)
        return (
            ClassificationResponse(
                model=ModelInfo(name="m", version="1"),
                decision="accepted",
                prediction=top,
                probabilities=[top],
                log_likelihood=LogLikelihood(bits_per_dim=0.0, per_class_bits_per_dim=[]),
                typicality=Typicality(
                    p_value=p,
                    alpha=0.0,
                    out_of_distribution=False,
                    statistic=statistic,
                    components={},
                ),
                attack=Attack(p_value=p, alpha=0.0, suspected=False, statistic=statistic),
            )
            .model_dump_json()
            .encode()
        )

    assert serve_load.check_answer(response("none", 1.0), "baseline") == "ok"
    assert serve_load.check_answer(response("combined_ood", 0.3), "gc") == "ok"
    assert serve_load.check_answer(response("none", 1.0), "gc") != "ok"
    assert serve_load.check_answer(None, "gc") != "ok"


def test_segment_order_is_abba(serve_load) -> None:
    assert serve_load.segment_order(1) == ["gc", "baseline"]
    assert serve_load.segment_order(3) == ["gc", "baseline", "baseline", "gc", "gc", "baseline"]


def test_cpu_accounting_reads_proc(serve_load) -> None:
    import os

    assert serve_load.busy_ticks() > 0
    assert serve_load.process_ticks(os.getpid()) >= 0
    assert serve_load.process_ticks(2**22 + 12345) is None  # no such process
    assert serve_load.frontend_tree(None) == []
    assert os.getpid() in serve_load.frontend_tree(os.getppid())
    meter = serve_load.CpuMeter([])
    assert meter.other_cores() >= 0.0
    assert meter.server_cores() == 0.0


def test_server_cpu_counts_the_server_processes_only(serve_load) -> None:
    """A child that burns 0.4 s of CPU is the server: the meter sees about 0.4 CPU seconds."""
    import subprocess
    import sys
    import time

    code = (
        "import sys, time\n"
        "sys.stdin.readline()\n"
        "end = time.process_time() + 0.4\n"
        "while time.process_time() < end: pass\n"
        "print('done', flush=True)\n"
        "sys.stdin.read()\n"  # stay alive (readable in /proc) until the test has measured
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        meter = serve_load.CpuMeter([child.pid])
        started = time.perf_counter()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        seconds = meter.server_cores() * (time.perf_counter() - started)
    finally:
        child.communicate("")
    assert 0.3 <= seconds <= 0.6
    summary = {"requests": 100, "seconds": 2.0, "server_cpu": 0.5, "client_cpu": 0.25}
    assert serve_load.cpu_ms_per_request(summary) == pytest.approx(15.0)
    assert serve_load.cpu_ms_per_request({**summary, "requests": 0}) != 15.0
    assert serve_load.gc_cpu_ceiling(2.5, cores=2) == pytest.approx(800.0)
    assert not np.isfinite(serve_load.gc_cpu_ceiling(float("nan"), cores=2))


def test_measure_cell_combines_segments_and_closes_senders(serve_load, monkeypatch) -> None:
    monkeypatch.setattr(serve_load, "check_answer", lambda body, role: f"checked {role}")

    class Sender:
        def __init__(self) -> None:
            self.closed = False

        def __call__(self, image: bytes):
            return True, b"answer"

        def close(self) -> None:
            self.closed = True

    senders = {"gc": Sender(), "baseline": Sender()}
    cell = serve_load.measure_cell(senders, [b"x"], 2, 0.04, 0.0, 2, lambda: [])
    assert set(cell) == {"gc", "baseline", "ratio"}
    for role in ("gc", "baseline"):
        assert cell[role]["requests"] > 0 and cell[role]["errors"] == 0
        assert cell[role]["check"] == f"checked {role}"
        assert cell[role]["other_cpu"] >= 0.0 and senders[role].closed
    assert cell["ratio"] > 0


def test_floor_joins_the_segments_and_the_ratios(serve_load, monkeypatch) -> None:
    assert serve_load.segment_order(2, ("gc", "baseline", "floor")) == [
        "gc", "baseline", "floor", "floor", "baseline", "gc",
    ]  # fmt: skip
    monkeypatch.setattr(serve_load, "check_answer", lambda body, role: "ok")

    def sender(delay: float):
        class Sender:
            def __call__(self, image: bytes):
                import time

                time.sleep(delay)
                return True, b"answer"

            def close(self) -> None:
                pass

        return Sender()

    senders = {"gc": sender(0.004), "baseline": sender(0.004), "floor": sender(0.001)}
    cell = serve_load.measure_cell(senders, [b"x"], 1, 0.1, 0.0, 1, lambda: [])
    assert set(cell) == {
        "gc",
        "baseline",
        "floor",
        "ratio",
        "floor_ratio",
        "cpu_bound_floor_ratio",
        "gc_cpu_ceiling",
    }
    expected = cell["gc"]["throughput"] / cell["floor"]["throughput"]
    assert cell["floor_ratio"] == pytest.approx(expected)
    assert cell["floor_ratio"] < 1.0  # the no-op floor answers faster
    import os

    ceiling = os.cpu_count() * 1e3 / cell["gc"]["cpu_ms_per_request"]
    assert cell["gc_cpu_ceiling"] == pytest.approx(ceiling)
    assert cell["cpu_bound_floor_ratio"] == pytest.approx(ceiling / cell["floor"]["throughput"])
    assert cell["gc"]["server_cpu"] == 0.0  # no server processes in this test


def test_answer_check_reads_oip_answers_and_accepts_the_floor(serve_load) -> None:
    import json

    assert serve_load.check_answer(b'{"noop": true}', "floor") == "ok"
    oip = json.dumps(
        {"outputs": [{"name": "answer", "datatype": "BYTES", "data": ['{"bad": 1}']}]}
    ).encode()
    with pytest.raises(ValueError):  # the answer inside is read and validated
        serve_load.check_answer(oip, "gc")


def test_render_runtimes_one_row_per_cell(serve_load) -> None:
    cell = _cell("REST", 16, 32, 90.0, 100.0)
    cell.update(runtime="kserve", floor={**cell["gc"], "throughput": 180.0}, floor_ratio=0.5)
    for side in ("gc", "baseline", "floor"):
        cell[side]["other_cpu"] = 0.0
    result = {
        "machine": "test CPU",
        "duration": 8.0,
        "warmup": 2.0,
        "segments": 2,
        "workers": "2 workers",
        "load_before": 0.5,
        "load_after": 1.0,
        "cells": [cell],
    }
    text = serve_load.render_runtimes(result)
    rows = [line for line in text.splitlines() if line.startswith("| kserve")]
    assert len(rows) == 1 and "**0.50x**" in rows[0] and "**0.90x**" in rows[0]


def test_gc_compute_times_score_decode_and_answer_per_image(serve_load) -> None:
    from traffic import png_bytes

    rng = np.random.default_rng(0)
    images = [png_bytes(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(3)]
    compute = serve_load.gc_compute(images, [2, 4], rounds=1, seconds=0.0)
    assert compute["backend"] == "onnxruntime"  # the shipped artifact's export matches
    names = set(compute["ms_per_image"])
    assert names == {
        "decode",
        "answer",
        "score batch 2, 1 thread",
        "score batch 2, 2 threads",
        "score batch 4, 1 thread",
        "score batch 4, 2 threads",
    }
    assert all(ms > 0 for ms in compute["ms_per_image"].values())
    # scoring an image costs more than decoding it or building its answer
    assert compute["ms_per_image"]["score batch 4, 1 thread"] > compute["ms_per_image"]["decode"]
    text = serve_load.render_compute(compute)
    assert text.count("\n- ") == 6 and text.count("img/s with nothing else running") == 2
