"""One forward pass per image set: posteriors, OoD scores, entropy and ROC-AUC."""

from __future__ import annotations

import numpy as np

from training.metrics import roc_auc
from training.report.models import _Model
from training.report.options import ReportOptions
from trustgc.inference import model_outputs
from trustgc.preprocess import pixels_to_tensor
from trustgc.trust.statistics import PAPER_STATISTIC, STATISTICS

OOD_METHODS = ("production", "paper_two_sided", "one_sided_likelihood", "max_posterior")


def _finite(values: np.ndarray) -> np.ndarray:
    """Scores for ROC-AUC: NaN (no verdict possible) counts as maximally OoD."""
    return np.nan_to_num(np.asarray(values, np.float64), nan=1e300, posinf=1e300, neginf=-1e300)


def _score(model: _Model, images: np.ndarray, options: ReportOptions) -> dict[str, np.ndarray]:
    """One forward pass: log q(y|x) and, for a GC, the OoD scores (higher = more OoD).

    The scores are those of ``training.ood``: production = -log p of the served, calibrated
    OoD p-value (``combined_ood_background`` with a background flow, else ``combined_ood``),
    paper_two_sided = -log p of the two-sided typicality test, one_sided_likelihood =
    -log q(x) / D, max_posterior = -max_y log q(y|x).  A GC is scored by its Predictor
    (:meth:`~trustgc.trust.predictor.Predictor.score`), exactly as served.
    """
    pixels = pixels_to_tensor(images)
    if model.predictor is None:
        # the baseline: the same doubt statistic as the GC's (it needs only the posteriors)
        outputs = model_outputs(model.network, pixels, options.batch_size, "cpu")
        return {
            "log_posterior": outputs.log_posterior,
            "max_posterior": STATISTICS["max_posterior"](outputs, None),
        }
    table = model.predictor.score(pixels.numpy(), batch_size=options.batch_size)
    return {
        "log_posterior": table.log_posterior,
        "production": -np.log(table.ood_p_value),
        "paper_two_sided": -np.log(table.p_values[PAPER_STATISTIC]),
        "one_sided_likelihood": table.statistics["typicality"],
        "max_posterior": table.statistics["max_posterior"],
        "log_likelihood": table.log_likelihood,
    }


def _entropy(log_posterior: np.ndarray) -> np.ndarray:
    p = np.exp(log_posterior)
    return -np.sum(np.where(p > 0, p * log_posterior, 0.0), axis=1)


def _auc(clean: np.ndarray, other: np.ndarray) -> float:
    return 100.0 * roc_auc(_finite(clean), _finite(other))
