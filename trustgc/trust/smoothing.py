"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019): a certified L2 radius per image.

The smoothed classifier is g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), where f is the
model's label for the noisy image clipped to [0, 1] (the clipping is part of f, so it does not
weaken the guarantee).  CERTIFY draws ``n0`` noisy copies to choose a candidate class c_A, then
``n`` fresh ones to bound p_A = P(f(x + e) = c_A) from below by the one-sided Clopper-Pearson
bound at level ``alpha``.  If that bound p exceeds 1/2, then with probability at least
1 - alpha over the sampling,

    g(x + d) = c_A   for every ||d||_2 < R = sigma * Phi^-1(p)

(Cohen et al., Theorem 1); otherwise the certificate abstains (radius 0, no class).  R is in
[0, 1] pixel units on the image, the unit of the attack suite (training/robustness.py).

What a certificate does **not** say: it is about g's label, which is not always the served
label f(x) (the answer says whether they agree); it says nothing about the OoD and attack
decisions; and it holds for L2 perturbations only.  Its cost is n0 + n forward passes of f.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Certificate", "certify", "clopper_pearson_lower", "count_noisy_labels"]

LabelsOf = Callable[[Tensor], Tensor]  # [0, 1] images (B, C, H, W) -> labels (B,)


@dataclass(frozen=True)
class Certificate:
    """The smoothed classifier's answer for one image and the radius it is certified in."""

    predicted_index: int | None  # g's class; None: abstained (p <= 1/2)
    radius: float  # sigma * Phi^-1(p_lower); 0.0 when abstaining
    p_lower: float  # one-sided Clopper-Pearson lower bound of P(f(x + e) = class)
    sigma: float
    n: int
    n0: int
    alpha: float

    @property
    def abstained(self) -> bool:
        return self.predicted_index is None


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """Exact one-sided lower confidence bound at level 1 - alpha for a binomial proportion."""
    if not 0 <= successes <= trials or trials < 1:
        raise ValueError(f"need 0 <= successes <= trials >= 1, got {successes} of {trials}")
    if successes == 0:
        return 0.0
    from scipy import stats  # lazily: the predictor imports this module, few callers certify

    return float(stats.beta.ppf(alpha, successes, trials - successes + 1))


def count_noisy_labels(
    labels_of: LabelsOf,
    x: Tensor,
    sigma: float,
    num: int,
    num_classes: int,
    batch_size: int,
    generator: torch.Generator,
) -> np.ndarray:
    """How often f labels each class over ``num`` noisy copies of one image x (C, H, W)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    remaining = num
    while remaining > 0:
        size = min(batch_size, remaining)
        noise = torch.randn((size, *x.shape), generator=generator, device=x.device)
        noisy = (x.unsqueeze(0) + sigma * noise).clamp(0.0, 1.0)
        labels = labels_of(noisy).cpu().numpy()
        counts += np.bincount(labels, minlength=num_classes)
        remaining -= size
    return counts


def certify(
    labels_of: LabelsOf,
    x: Tensor,
    num_classes: int,
    sigma: float = 0.25,
    n: int = 1000,
    n0: int = 100,
    alpha: float = 0.001,
    batch_size: int = 500,
    generator: torch.Generator | None = None,
) -> Certificate:
    """CERTIFY of Cohen et al. for one image x (C, H, W) in [0, 1] (see the module docstring)."""
    if sigma <= 0 or n < 1 or n0 < 1 or not 0 < alpha < 1:
        raise ValueError(f"need sigma > 0, n >= 1, n0 >= 1, 0 < alpha < 1; got {sigma, n, n0}")
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)
    selection = count_noisy_labels(labels_of, x, sigma, n0, num_classes, batch_size, generator)
    candidate = int(np.argmax(selection))
    estimation = count_noisy_labels(labels_of, x, sigma, n, num_classes, batch_size, generator)
    p_lower = clopper_pearson_lower(int(estimation[candidate]), n, alpha)
    if p_lower <= 0.5:
        return Certificate(None, 0.0, p_lower, sigma, n, n0, alpha)
    from scipy import stats

    radius = float(sigma * stats.norm.ppf(p_lower))
    return Certificate(candidate, radius, p_lower, sigma, n, n0, alpha)
