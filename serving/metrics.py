"""The handler's Prometheus metrics, exported through TorchServe's metrics endpoint.

Names follow prometheus/client_python conventions: one ``gc_`` prefix, counters end in
``_total``, durations in ``_seconds``; labels come from bounded sets only (decision, statistic,
class).  They must be declared in ``deploy/torchserve/metrics.yaml`` to appear in prometheus
mode.  Every known label value is created at start-up so the series exist before the first event
(alerts on absent series would otherwise misfire).
"""

from __future__ import annotations

from ts.metrics.metric_type_enum import MetricTypes

from serving.schema import ClassificationResponse
from trustgc.trust.table import Decision

__all__ = ["DECISIONS", "HandlerMetrics", "INVALID_INPUT"]

#: The decision label of a request that never reached the model (bad input).
INVALID_INPUT = "invalid_input"
#: Every ``decision`` label value: the core's decisions plus the adapter's own.
DECISIONS = (*(decision.value for decision in Decision), INVALID_INPUT)


class HandlerMetrics:
    def __init__(self, cache, model_name: str, class_names: tuple[str, ...]) -> None:
        self.model_name = model_name
        self.decisions = cache.add_metric_to_cache(
            "gc_decisions_total", "count", ["ModelName", "decision"], MetricTypes.COUNTER
        )
        self.predictions = cache.add_metric_to_cache(
            "gc_predictions_total", "count", ["ModelName", "class"], MetricTypes.COUNTER
        )
        self.p_values = cache.add_metric_to_cache(
            "gc_p_value", "ratio", ["ModelName", "statistic"], MetricTypes.HISTOGRAM
        )
        self.latency_metric = cache.add_metric_to_cache(
            "gc_handler_latency_seconds", "seconds", ["ModelName"], MetricTypes.HISTOGRAM
        )
        for decision in DECISIONS:
            self.decisions.add_or_update(0, [model_name, decision])
        for name in class_names:
            self.predictions.add_or_update(0, [model_name, name])

    def observe(self, response: ClassificationResponse) -> None:
        self.decisions.add_or_update(1, [self.model_name, response.decision])
        self.predictions.add_or_update(1, [self.model_name, response.prediction.label])
        self.p_values.add_or_update(response.typicality.p_value, [self.model_name, "ood"])
        self.p_values.add_or_update(response.attack.p_value, [self.model_name, "attack"])
        paper = response.typicality.components.get("typicality")
        if paper is not None:
            self.p_values.add_or_update(paper, [self.model_name, "typicality"])

    def invalid_input(self) -> None:
        self.decisions.add_or_update(1, [self.model_name, INVALID_INPUT])

    def latency(self, seconds: float, batch_size: int) -> None:
        self.latency_metric.add_or_update(seconds, [self.model_name])
