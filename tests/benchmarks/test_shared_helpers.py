"""The shared benchmark helpers: the timing loop (benchmarks/timing.py) and the closed-loop
traffic generator (benchmarks/traffic.py) that every benchmark script uses."""

from __future__ import annotations

import threading

import pytest

from .conftest import load_script


@pytest.fixture(scope="module")
def timing():
    return load_script("timing")


@pytest.fixture(scope="module")
def traffic():
    return load_script("traffic")


def test_min_calls_and_warmup_are_honoured(timing) -> None:
    calls: list[str] = []
    per_round = timing.time_rounds_raw(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        rounds=2,
        seconds=0.0,
        warmup=2,
        min_calls=3,
    )
    assert calls == ["a", "a", "b", "b"] + (["a"] * 3 + ["b"] * 3) * 2
    assert {name: len(values) for name, values in per_round.items()} == {"a": 2, "b": 2}


def test_paired_ratio_is_the_median_of_round_ratios(timing) -> None:
    per_round = {"x": [2.0, 4.0, 100.0], "y": [1.0, 1.0, 10.0]}
    assert timing.paired_ratio(per_round, "x", "y") == pytest.approx(4.0)


def test_closed_loop_sends_back_to_back_per_client(traffic) -> None:
    lock = threading.Lock()
    in_flight: dict[int, int] = {}
    overlaps: list[int] = []

    def request(client: int, sequence: int) -> tuple[int, int]:
        with lock:
            in_flight[client] = in_flight.get(client, 0) + 1
            if in_flight[client] > 1:
                overlaps.append(client)
        with lock:
            in_flight[client] -= 1
        return client, sequence

    started: list[bool] = []
    # Long enough that every client thread is scheduled before the deadline on a loaded 2-core
    # machine (at 0.05 s, clients 1 and 2 were once never run before the deadline passed).
    duration = 0.5
    result = traffic.closed_loop(
        request, clients=3, duration=duration, on_start=lambda: started.append(1)
    )
    assert started == [1] and not overlaps
    assert {sample.client for sample in result.samples} == {0, 1, 2}
    for client in range(3):
        sequences = [s.sequence for s in result.samples if s.client == client]
        assert sequences == list(range(len(sequences)))
        assert all(s.result == (s.client, s.sequence) for s in result.samples)
    starts = [s.started for s in result.samples]
    assert starts == sorted(starts) and result.elapsed >= duration and result.client_cpu >= 0


def test_closed_loop_reraises_what_a_request_raises(traffic) -> None:
    def request(client: int, sequence: int) -> None:
        raise RuntimeError(f"client {client} failed")

    with pytest.raises(RuntimeError, match="failed"):
        traffic.closed_loop(request, clients=2, duration=0.01)


def test_free_ports_are_distinct_and_png_images_decode(traffic) -> None:
    import io

    from PIL import Image

    ports = traffic.free_ports(("a", "b", "c"))
    assert set(ports) == {"a", "b", "c"} and len(set(ports.values())) == 3
    images, source = traffic.fashion_png_images(4)
    assert len(images) == 4 and source
    assert Image.open(io.BytesIO(images[0])).size == (28, 28)
