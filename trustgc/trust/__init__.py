"""The trust layer: calibrated p-values for OoD inputs and attacks, and the prediction API."""

from trustgc.trust.calibration import Calibration, fit_calibration, load_calibration
from trustgc.trust.predictor import Predictor, TrustResult
from trustgc.trust.pvalues import EmpiricalReference
from trustgc.trust.table import Decision, ScoreTable

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
