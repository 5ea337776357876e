"""The handler's Prometheus metrics on the KServe runtime: serving.metrics via prometheus_client.

The metric definitions and what is recorded in them live once, in :mod:`serving.metrics`
(:class:`~serving.metrics.HandlerMetrics` and its :class:`~serving.metrics.MetricSpec` list);
TorchServe registers them in its metrics cache (serving/handler.py), this module in
prometheus_client's default registry, which KServe's model server exports on its REST port at
``/metrics``.  Same names and labels on both runtimes, so dashboards and alert rules read either
(TorchServe adds a ``Hostname`` label; Prometheus adds ``instance`` to both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from serving.metrics import HandlerMetrics, MetricSpec, Register, calibration_id
from trustgc.trust.calibration import CALIBRATION_FILE

__all__ = ["prometheus_register", "served_metrics"]

# p-values live in [0, 1]; the alert rules look at the low tail (alpha is a few percent)
_BUCKETS = {
    "gc_p_value": (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0),
    "gc_handler_latency_seconds": (
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ),
}  # fmt: skip


class _Recorder:
    """TorchServe's ``add_or_update(value, label_values)`` on a prometheus_client metric."""

    def __init__(self, metric, kind: str) -> None:
        self.metric = metric
        self.kind = kind

    def add_or_update(self, value: float, label_values: list[str]) -> None:
        child = self.metric.labels(*label_values)
        if self.kind == "counter":
            child.inc(value)  # inc(0) creates the series, as TorchServe's first update does
        elif self.kind == "gauge":
            child.set(value)
        else:
            child.observe(value)


def prometheus_register(registry: CollectorRegistry = REGISTRY) -> Register:
    """A ``register`` for :class:`HandlerMetrics` backed by prometheus_client (once per name)."""
    registered: dict[str, _Recorder] = {}
    types = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}

    def register(spec: MetricSpec) -> _Recorder:
        if spec.name not in registered:
            extra: dict[str, Any] = {}
            if spec.kind == "histogram":
                extra["buckets"] = _BUCKETS.get(spec.name, Histogram.DEFAULT_BUCKETS)
            metric = types[spec.kind](
                spec.name, f"{spec.name} ({spec.unit})", list(spec.labels), registry=registry,
                **extra,
            )  # fmt: skip
            registered[spec.name] = _Recorder(metric, spec.kind)
        return registered[spec.name]

    return register


def served_metrics(
    predictor, model_name: str, model_dir: Path, backend: str, registry=REGISTRY
) -> HandlerMetrics:
    """The model's metrics, with what is served recorded as TorchServe's handler records it."""
    metrics = HandlerMetrics(prometheus_register(registry), model_name, predictor.class_names)
    calibration = predictor.calibration
    if calibration is None:  # a discriminative baseline: no tests, no alphas
        metrics.served(backend)
    else:
        metrics.served(
            backend,
            {"ood": calibration.ood_alpha, "attack": calibration.attack_alpha},
            calibration_id(Path(model_dir) / CALIBRATION_FILE),
        )
    return metrics
