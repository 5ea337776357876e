"""The trust layer: calibrated p-values for OoD inputs and attacks, and the prediction API.

Names are imported on first use, so that ``trustgc.trust.statistics`` (the statistic registry)
and ``trustgc.trust.table`` can be read without loading torch and the model stack.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "Calibration",
    "Decision",
    "EmpiricalReference",
    "Predictor",
    "ScoreTable",
    "TrustResult",
    "fit_calibration",
    "load_calibration",
]

_HOMES = {
    "Calibration": "calibration",
    "fit_calibration": "calibration",
    "load_calibration": "calibration",
    "Decision": "table",
    "ScoreTable": "table",
    "EmpiricalReference": "pvalues",
    "Predictor": "predictor",
    "TrustResult": "predictor",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
