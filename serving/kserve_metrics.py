"""The handler's Prometheus metrics for the KServe runtime: same names and labels as TorchServe's.

TorchServe exports ``gc_*`` through its metrics cache (serving/metrics.py, declared in
deploy/torchserve/metrics.yaml); KServe's model server exports prometheus_client's default
registry on its REST port at ``/metrics``, so the same series are registered here with
prometheus_client types.  Dashboards and alert rules read either runtime unchanged (TorchServe
adds a ``Hostname`` label; Prometheus adds ``instance`` to both).  Every known label value is
created at start-up, as on TorchServe, so alerts on absent series do not misfire.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from serving.metrics import DECISIONS
from serving.schema import ClassificationResponse

__all__ = ["OipMetrics"]

INVALID_INPUT = "invalid_input"
# p-values live in [0, 1]; the alert rules look at the low tail (alpha is a few percent)
P_VALUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class OipMetrics:
    """``gc_decisions_total``, ``gc_predictions_total``, ``gc_p_value``,
    ``gc_handler_latency_seconds`` and ``gc_backend_info``, labelled like TorchServe's."""

    def __init__(
        self,
        model_name: str,
        class_names: tuple[str, ...],
        backend: str,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        assert INVALID_INPUT in DECISIONS
        self.model_name = model_name
        self.decisions = Counter(
            "gc_decisions_total",
            "answers by decision",
            ["ModelName", "decision"],
            registry=registry,
        )
        self.predictions = Counter(
            "gc_predictions_total",
            "answers by predicted class",
            ["ModelName", "class"],
            registry=registry,
        )
        self.p_values = Histogram(
            "gc_p_value",
            "served p-values",
            ["ModelName", "statistic"],
            buckets=P_VALUE_BUCKETS,
            registry=registry,
        )
        self.latency_metric = Histogram(
            "gc_handler_latency_seconds",
            "handler time per batch",
            ["ModelName"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.backend = Gauge(
            "gc_backend_info",
            "which backend runs f",
            ["ModelName", "backend"],
            registry=registry,
        )
        self.backend.labels(model_name, backend).set(1)
        for decision in DECISIONS:
            self.decisions.labels(model_name, decision)
        for name in class_names:
            self.predictions.labels(model_name, name)

    def observe(self, response: ClassificationResponse) -> None:
        self.decisions.labels(self.model_name, response.decision).inc()
        self.predictions.labels(self.model_name, response.prediction.label).inc()
        self.p_values.labels(self.model_name, "ood").observe(response.typicality.p_value)
        self.p_values.labels(self.model_name, "attack").observe(response.attack.p_value)
        paper = response.typicality.components.get("typicality")
        if paper is not None:
            self.p_values.labels(self.model_name, "typicality").observe(paper)

    def invalid_input(self) -> None:
        self.decisions.labels(self.model_name, INVALID_INPUT).inc()

    def latency(self, seconds: float) -> None:
        self.latency_metric.labels(self.model_name).observe(seconds)
