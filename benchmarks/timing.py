"""The one timing loop of the benchmark scripts: alternating rounds, medians, paired ratios.

``model_cost.py`` and ``onnx_vs_torch.py`` both compare callables on a machine shared with other
jobs.  Timing them in alternating rounds (each callable back to back within a round) spreads that
load over all of them alike; medians and per-round ratios then discard the rounds it spoiled.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["paired_ratio", "time_rounds", "time_rounds_raw"]


def time_rounds_raw(
    calls: dict[str, Callable[[], object]],
    rounds: int,
    seconds: float,
    warmup: int = 1,
    min_calls: int = 1,
) -> dict[str, list[float]]:
    """Seconds per call of each callable in each of ``rounds`` alternating rounds.

    Each callable first runs ``warmup`` times untimed (allocations, onnxruntime's first-run
    planning).  In a round, each runs back to back until at least ``seconds`` have passed and it
    ran at least ``min_calls`` times (``seconds=0``, ``min_calls=1``: one call per round).
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    per_round: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(max(1, rounds)):
        for name, call in calls.items():
            count, started = 0, time.perf_counter()
            while True:
                call()
                count += 1
                elapsed = time.perf_counter() - started
                if elapsed >= seconds and count >= min_calls:
                    break
            per_round[name].append(elapsed / count)
    return per_round


def time_rounds(
    calls: dict[str, Callable[[], object]],
    rounds: int,
    seconds: float,
    warmup: int = 1,
    min_calls: int = 1,
) -> dict[str, float]:
    """Median over rounds of the seconds per call of each callable (see :func:`time_rounds_raw`)."""
    per_round = time_rounds_raw(calls, rounds, seconds, warmup, min_calls)
    return {name: statistics.median(values) for name, values in per_round.items()}


def paired_ratio(per_round: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of numerator / denominator time: each pair ran back to back, so slow
    drifts of the machine's load cancel out of every ratio."""
    pairs = zip(per_round[numerator], per_round[denominator], strict=True)
    return statistics.median(a / b for a, b in pairs)
