"""One forward pass per image set: posteriors, OoD scores, entropy and ROC-AUC."""

from __future__ import annotations

import numpy as np

from training.metrics import roc_auc
from training.report.models import _Model
from training.report.options import ReportOptions
from trustgc.inference import model_outputs
from trustgc.preprocess import pixels_to_tensor
from trustgc.trust.calibration import PAPER_STATISTIC
from trustgc.trust.statistics import STATISTICS, compute_statistics

OOD_METHODS = ("production", "paper_two_sided", "one_sided_likelihood", "max_posterior")


def _finite(values: np.ndarray) -> np.ndarray:
    """Scores for ROC-AUC: NaN (no verdict possible) counts as maximally OoD."""
    return np.nan_to_num(np.asarray(values, np.float64), nan=1e300, posinf=1e300, neginf=-1e300)


def _score(model: _Model, images: np.ndarray, options: ReportOptions) -> dict[str, np.ndarray]:
    """One forward pass: log q(y|x) and, for a GC, the OoD scores (higher = more OoD).

    The scores are those of ``training.ood``: production = -log p of the served (Fisher,
    calibrated) OoD p-value, paper_two_sided = -log p of the two-sided typicality test,
    one_sided_likelihood = -log q(x) / D, max_posterior = -max_y log q(y|x).
    """
    pixels = pixels_to_tensor(images)
    outputs = model_outputs(model.network, pixels, options.batch_size, "cpu")
    scores = {"log_posterior": outputs.log_posterior}
    if model.predictor is None:
        # the same doubt statistic as the GC's (it needs only the posteriors)
        scores["max_posterior"] = STATISTICS["max_posterior"](outputs, None)
        return scores
    calibration = model.predictor.calibration
    names = sorted(calibration.components)
    statistics = compute_statistics(outputs, pixels.numpy(), names)
    p = model.predictor.p_values(statistics)
    scores["production"] = -np.log(p[calibration.ood_statistic])
    scores["paper_two_sided"] = -np.log(p[PAPER_STATISTIC])
    scores["one_sided_likelihood"] = statistics["typicality"]
    scores["max_posterior"] = statistics["max_posterior"]
    scores["log_likelihood"] = outputs.log_likelihood
    return scores


def _entropy(log_posterior: np.ndarray) -> np.ndarray:
    p = np.exp(log_posterior)
    return -np.sum(np.where(p > 0, p * log_posterior, 0.0), axis=1)


def _auc(clean: np.ndarray, other: np.ndarray) -> float:
    return 100.0 * roc_auc(_finite(clean), _finite(other))
