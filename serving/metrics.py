"""The handler's Prometheus metrics: their definitions, and what the handler records in them.

Names follow prometheus/client_python conventions: one ``gc_`` prefix, counters end in
``_total``, durations in ``_seconds``; labels come from bounded sets only (decision, statistic,
class, test).  They must be declared in ``deploy/torchserve/metrics.yaml`` to appear in
prometheus mode (tests/serving/test_metrics_declared.py checks that every one is).  Every known
label value is created at start-up so the series exist before the first event (alerts on absent
series would otherwise misfire).

This module does not import TorchServe: the handler (the only module that does) registers each
:class:`MetricSpec` in TorchServe's metrics cache and hands :class:`HandlerMetrics` the function
that does it.  The served significance levels and the calibration's identity are metrics too, so
the alert rules read the alpha that is actually served (no rendered copy to keep in sync).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from serving.schema import ClassificationResponse
from trustgc.trust.table import Decision

__all__ = [
    "DECISIONS",
    "INVALID_INPUT",
    "METRICS",
    "HandlerMetrics",
    "MetricSpec",
    "calibration_id",
]

#: The decision label of a request that never reached the model (bad input).
INVALID_INPUT = "invalid_input"
#: Every ``decision`` label value: the core's decisions plus the adapter's own.
DECISIONS = (*(decision.value for decision in Decision), INVALID_INPUT)
#: Characters of the calibration file's SHA-256 in ``gc_calibration_info``'s label.
CALIBRATION_ID_LENGTH = 16


@dataclass(frozen=True)
class MetricSpec:
    """One metric as TorchServe's metrics cache and metrics.yaml declare it."""

    name: str
    unit: str
    labels: tuple[str, ...]
    kind: Literal["counter", "gauge", "histogram"]


DECISIONS_TOTAL = MetricSpec("gc_decisions_total", "count", ("ModelName", "decision"), "counter")
PREDICTIONS_TOTAL = MetricSpec("gc_predictions_total", "count", ("ModelName", "class"), "counter")
P_VALUE = MetricSpec("gc_p_value", "ratio", ("ModelName", "statistic"), "histogram")
HANDLER_LATENCY = MetricSpec("gc_handler_latency_seconds", "seconds", ("ModelName",), "histogram")
#: 1 for the backend that runs the network f (torch or onnxruntime), for dashboards.
BACKEND_INFO = MetricSpec("gc_backend_info", "count", ("ModelName", "backend"), "gauge")
#: The served significance level of each test (``ood``, ``attack``): the alert bounds' alpha.
ALPHA = MetricSpec("gc_alpha", "ratio", ("ModelName", "test"), "gauge")
#: 1, labelled with the served calibration.json's SHA-256 prefix: replicas that disagree show.
CALIBRATION_INFO = MetricSpec("gc_calibration_info", "count", ("ModelName", "calibration"), "gauge")
#: Randomized-smoothing certificates answered (request option ``certify``), by ``outcome``
#: certified / abstained: each costs ~1 s of a core, so their rate is the servers' CPU story.
CERTIFICATES_TOTAL = MetricSpec(
    "gc_certificates_total", "count", ("ModelName", "outcome"), "counter"
)
#: Every ``outcome`` label value of :data:`CERTIFICATES_TOTAL`.
CERTIFICATE_OUTCOMES = ("certified", "abstained")
METRICS = (
    DECISIONS_TOTAL,
    PREDICTIONS_TOTAL,
    P_VALUE,
    HANDLER_LATENCY,
    BACKEND_INFO,
    ALPHA,
    CALIBRATION_INFO,
    CERTIFICATES_TOTAL,
)

#: Registers one metric and returns it (an object with ``add_or_update(value, label_values)``).
Register = Callable[[MetricSpec], Any]


def calibration_id(path: Path) -> str:
    """The calibration file's identity: the first hex digits of its SHA-256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:CALIBRATION_ID_LENGTH]


class HandlerMetrics:
    """The metrics of one served model, registered through ``register`` at start-up."""

    def __init__(self, register: Register, model_name: str, class_names: tuple[str, ...]) -> None:
        self.register = register
        self.model_name = model_name
        self.decisions = register(DECISIONS_TOTAL)
        self.predictions = register(PREDICTIONS_TOTAL)
        self.p_values = register(P_VALUE)
        self.latency_metric = register(HANDLER_LATENCY)
        self.certificates = register(CERTIFICATES_TOTAL)
        for outcome in CERTIFICATE_OUTCOMES:
            self.certificates.add_or_update(0, [model_name, outcome])
        for decision in DECISIONS:
            self.decisions.add_or_update(0, [model_name, decision])
        for name in class_names:
            self.predictions.add_or_update(0, [model_name, name])

    def served(
        self, backend: str, alphas: dict[str, float] | None = None, calibration: str | None = None
    ) -> None:
        """What is served: the backend, and for a calibrated model its alphas (test -> alpha)
        and the calibration's identity (:func:`calibration_id`)."""
        self.register(BACKEND_INFO).add_or_update(1, [self.model_name, backend])
        if alphas:
            alpha = self.register(ALPHA)
            for test, value in alphas.items():
                alpha.add_or_update(value, [self.model_name, test])
        if calibration is not None:
            self.register(CALIBRATION_INFO).add_or_update(1, [self.model_name, calibration])

    def observe(self, response: ClassificationResponse) -> None:
        self.decisions.add_or_update(1, [self.model_name, response.decision])
        self.predictions.add_or_update(1, [self.model_name, response.prediction.label])
        self.p_values.add_or_update(response.typicality.p_value, [self.model_name, "ood"])
        self.p_values.add_or_update(response.attack.p_value, [self.model_name, "attack"])
        paper = response.typicality.components.get("typicality")
        if paper is not None:
            self.p_values.add_or_update(paper, [self.model_name, "typicality"])

    def certified(self, response: ClassificationResponse) -> None:
        """Count the answer's certificate, if it carries one."""
        if response.certificate is not None:
            outcome = "abstained" if response.certificate.label is None else "certified"
            self.certificates.add_or_update(1, [self.model_name, outcome])

    def invalid_input(self) -> None:
        self.decisions.add_or_update(1, [self.model_name, INVALID_INPUT])

    def latency(self, seconds: float, batch_size: int) -> None:
        self.latency_metric.add_or_update(seconds, [self.model_name])
