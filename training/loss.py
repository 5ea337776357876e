"""The information-bottleneck loss of the IB-INN (paper Eq. 6-7, method-notes "Loss").

    L_X = -log q(x) / D                         (nats per dimension, all constants included)
    L_Y = cross-entropy of q(y|x) against the (optionally smoothed) label
    L   = L_X / (1 + beta) + beta / (1 + beta) * L_Y

The weighted form is the authors' and equals (L_X + beta * L_Y) / (1 + beta): the same optimum
as L_X + beta * L_Y, but finite for beta = inf (cross-entropy only) and a plain flow for beta = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from trustgc.scoring import LatentScores

__all__ = ["IBLoss", "ib_loss", "loss_weights"]


@dataclass(frozen=True)
class IBLoss:
    """The total loss and its two terms, batch means."""

    total: Tensor
    l_x: Tensor
    l_y: Tensor


def loss_weights(beta: float) -> tuple[float, float]:
    """(weight of L_X, weight of L_Y) = (1 / (1 + beta), beta / (1 + beta)), inf handled."""
    if beta < 0 or math.isnan(beta):
        raise ValueError(f"beta must be >= 0 or inf, got {beta}")
    if math.isinf(beta):
        return 0.0, 1.0
    return 1.0 / (1.0 + beta), beta / (1.0 + beta)


def ib_loss(
    scores: LatentScores, labels: Tensor, beta: float, label_smoothing: float = 0.0
) -> IBLoss:
    """IB loss of a scored batch (see module docstring for the formula)."""
    l_x = (-scores.log_likelihood / scores.dim).mean()
    l_y = torch.nn.functional.cross_entropy(scores.logits, labels, label_smoothing=label_smoothing)
    weight_x, weight_y = loss_weights(beta)
    total = weight_x * l_x + weight_y * l_y
    return IBLoss(total=total, l_x=l_x, l_y=l_y)
