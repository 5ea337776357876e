"""Columnar scores of a batch (:class:`ScoreTable`) and the served decision rule.

Kept free of torch so that anything that only reads results (metrics, reports, clients) can
import the :class:`Decision` values without the model stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

__all__ = ["Decision", "ScoreTable", "decide"]


class Decision(StrEnum):
    """What the service does with an image; ``decide`` is the one rule that picks it."""

    ACCEPTED = "accepted"
    REJECTED_OOD = "rejected_ood"
    FLAGGED_ATTACK = "flagged_attack"


def decide(out_of_distribution: np.ndarray, attack_suspected: np.ndarray) -> np.ndarray:
    """Per image, in order: ``rejected_ood`` if OoD, else ``flagged_attack``, else ``accepted``.

    OoD wins because an input the model does not explain has no prediction worth guarding.
    Returns an object array of :class:`Decision` members, shape (N,).
    """
    ood = np.asarray(out_of_distribution, dtype=bool)
    attack = np.asarray(attack_suspected, dtype=bool)
    choices = np.empty(3, dtype=object)  # filled element-wise: np.full would store plain str
    choices[:] = [Decision.ACCEPTED, Decision.FLAGGED_ATTACK, Decision.REJECTED_OOD]
    return choices[np.where(ood, 2, np.where(attack, 1, 0))]


@dataclass(frozen=True)
class ScoreTable:
    """Everything :meth:`Predictor.score` says about N images, one array per column.

    Rows are images in input order.  ``statistics`` holds each served trust statistic (N,) and
    ``p_values`` its p-value plus each combined statistic's (``ood_statistic``,
    ``attack_statistic``).  A discriminative classifier has neutral columns: no statistics or
    p-values, bits/dim 0.0 and no per-class values ((N, 0)), served p-values 1.0, alphas 0.0,
    statistic names ``"none"``, every image accepted.
    """

    log_posterior: np.ndarray  # (N, K) log q(y|x)
    probabilities: np.ndarray  # (N, K) q(y|x)
    log_likelihood: np.ndarray | None  # (N,) log q(x); None for a classifier
    class_bits_per_dim: np.ndarray  # (N, K) -log q(x|y) in bits/dim; (N, 0) for a classifier
    bits_per_dim: np.ndarray  # (N,) -log q(x) in bits/dim; 0.0 for a classifier
    statistics: dict[str, np.ndarray]  # served component statistics, each (N,)
    p_values: dict[str, np.ndarray]  # component and combined p-values, each (N,)
    ood_statistic: str
    ood_alpha: float
    attack_statistic: str
    attack_alpha: float
    out_of_distribution: np.ndarray  # (N,) bool: ood p-value < ood_alpha
    attack_suspected: np.ndarray  # (N,) bool: attack p-value < attack_alpha
    decisions: np.ndarray  # (N,) Decision members (object array)
    ood_components: tuple[str, ...] = ()  # the served OoD statistic's components (none: classifier)

    def __len__(self) -> int:
        return int(self.probabilities.shape[0])

    @property
    def predicted_index(self) -> np.ndarray:
        """(N,) argmax of the posterior."""
        return np.argmax(self.probabilities, axis=1)

    @property
    def ood_p_value(self) -> np.ndarray:
        """(N,) the served OoD p-value (1.0 for a classifier)."""
        return self.p_values.get(self.ood_statistic, np.ones(len(self)))

    @property
    def attack_p_value(self) -> np.ndarray:
        """(N,) the served attack p-value (1.0 for a classifier)."""
        return self.p_values.get(self.attack_statistic, np.ones(len(self)))

    @property
    def rejected_by(self) -> np.ndarray:
        """(N,) per image rejected as OoD, the served OoD component with the smallest p-value
        (the test that saw the image as least typical); None for images not rejected.

        This names the evidence, it does not decide: the decision is the combined p-value's.
        """
        names = np.full(len(self), None, dtype=object)
        if not self.ood_components:
            return names
        p = np.stack([self.p_values[name] for name in self.ood_components], axis=1)
        smallest = np.asarray(self.ood_components, dtype=object)[np.argmin(p, axis=1)]
        names[self.out_of_distribution] = smallest[self.out_of_distribution]
        return names
