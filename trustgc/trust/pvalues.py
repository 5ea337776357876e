"""Conservative empirical p-values against a reference sample of in-distribution scores.

For a reference sample s_1..s_n drawn from the score's in-distribution law F and a new score s:

    p_upper(s)     = (1 + #{i: s_i >= s}) / (n + 1)        large scores are suspicious
    p_lower(s)     = (1 + #{i: s_i <= s}) / (n + 1)        small scores are suspicious
    p_two_sided(s) = min(1, 2 * min(p_lower(s), p_upper(s)))  (the paper's typicality test)

If s is exchangeable with the reference (the null hypothesis: the input is in-distribution),
P(p <= alpha) <= alpha for every alpha: the rejection rate never exceeds alpha.  Each lookup is a
binary search, so a batch of p-values costs O(B log n), nothing beside a forward pass.

These p-values cannot go below 1 / (n + 1): a score far beyond the whole reference gets the same
p as one just past its maximum.  Where p-values are combined (products, minima), that floor would
cap what one extreme component can contribute, so ``tail_extrapolation`` continues each tail
beyond the reference with an exponential fitted to its outermost scores:

    p_upper(s) = exp(-(s - s_max) / tau) / (n + 1)   for s > s_max

with tau the mean excess of the top ``tail_size`` scores over the ``tail_size``-th largest (the
lower tail alike).  Such scores are then merely *ranked*: the combined statistic is calibrated
empirically on separate data, so its validity never rests on this tail model.

Step or linear.  The counts above make p a step function of the score: a score moving by 1e-7
across a reference value changes p by 1 / (n + 1), and where p-values feed a second statistic
(the combined OoD test) by many steps.  Two runtimes that compute the same score to float32
precision (torch and ONNX Runtime) then disagree on a few percent of inputs.  ``interpolation =
"linear"`` returns instead the smallest continuous, piecewise-linear function that is never
below the step p-value and agrees with it at every reference value: between neighbouring
reference values r_j < r_j+1 it falls linearly from the step's value at r_j to its value just
past r_j+1 (upper side; the lower side mirrored).  Never below the step p-value, it is exactly
as valid (P(p <= alpha) <= alpha); it is at most 1 / (n + 1) above it (a tie block of t equal
reference values: t / (n + 1)), so at a grid level k / (n + 1) the rejection rate is
(k - 1) / (n + 1) instead of k / (n + 1).  Beyond the outermost reference value it stays at
2 / (n + 1), or with ``tail_extrapolation`` decays from there as 2 exp(-excess / tau) / (n + 1),
so the whole curve is continuous.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["EmpiricalReference", "Interpolation", "Side"]

Side = Literal["upper", "lower", "two_sided"]
Interpolation = Literal["step", "linear"]


class EmpiricalReference:
    """A sorted reference sample with p-value lookups for one side."""

    def __init__(
        self,
        scores: np.ndarray,
        side: Side,
        tail_extrapolation: bool = False,
        tail_size: int = 50,
        interpolation: Interpolation = "step",
    ) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 1 or scores.size == 0:
            raise ValueError(f"reference scores must be a non-empty 1-D array, got {scores.shape}")
        if not np.all(np.isfinite(scores)):
            raise ValueError("reference scores must be finite")
        if side not in ("upper", "lower", "two_sided"):
            raise ValueError(f"side must be upper, lower or two_sided, got {side!r}")
        if interpolation not in ("step", "linear"):
            raise ValueError(f"interpolation must be step or linear, got {interpolation!r}")
        self.sorted_scores = np.sort(scores)
        self.side: Side = side
        self.tail_extrapolation = tail_extrapolation
        self.interpolation: Interpolation = interpolation
        # Knots of the linear envelope: each distinct reference value with the step p-value at
        # it, upper side counting the whole tie block as ">=", lower side as "<=".
        n = self.size
        self._knots, first = np.unique(self.sorted_scores, return_index=True)
        last = np.r_[first[1:], n] - 1
        self._upper_at_knots = (n + 1.0 - first) / (n + 1.0)
        self._lower_at_knots = (last + 2.0) / (n + 1.0)
        k = int(min(max(tail_size, 2), scores.size - 1)) if scores.size > 2 else 0
        top, bottom = self.sorted_scores[::-1][:k], self.sorted_scores[:k]
        tiny = np.finfo(np.float64).tiny
        self._upper_scale = max(float(np.mean(top - top[-1])), tiny) if k else 1.0
        self._lower_scale = max(float(np.mean(bottom[-1] - bottom)), tiny) if k else 1.0

    @property
    def size(self) -> int:
        return int(self.sorted_scores.size)

    def p_upper(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        if self.interpolation == "linear":
            p = np.interp(scores, self._knots, self._upper_at_knots)
            if self.tail_extrapolation:
                beyond = np.maximum(scores - self._knots[-1], 0.0) / self._upper_scale
                p = np.where(scores > self._knots[-1], p * np.exp(-beyond), p)
            return p
        at_least = self.size - np.searchsorted(self.sorted_scores, scores, side="left")
        p = (1.0 + at_least) / (self.size + 1.0)
        if self.tail_extrapolation:
            beyond = np.maximum(scores - self.sorted_scores[-1], 0.0) / self._upper_scale
            p = np.where(at_least == 0, np.exp(-beyond) / (self.size + 1.0), p)
        return p

    def p_lower(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        if self.interpolation == "linear":
            p = np.interp(scores, self._knots, self._lower_at_knots)
            if self.tail_extrapolation:
                beyond = np.maximum(self._knots[0] - scores, 0.0) / self._lower_scale
                p = np.where(scores < self._knots[0], p * np.exp(-beyond), p)
            return p
        at_most = np.searchsorted(self.sorted_scores, scores, side="right")
        p = (1.0 + at_most) / (self.size + 1.0)
        if self.tail_extrapolation:
            beyond = np.maximum(self.sorted_scores[0] - scores, 0.0) / self._lower_scale
            p = np.where(at_most == 0, np.exp(-beyond) / (self.size + 1.0), p)
        return p

    def p_value(self, scores: np.ndarray) -> np.ndarray:
        """p-values of ``scores`` for this reference's side; NaN scores get p = 0 (reject)."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.side == "upper":
            p = self.p_upper(scores)
        elif self.side == "lower":
            p = self.p_lower(scores)
        else:
            p = np.minimum(1.0, 2.0 * np.minimum(self.p_lower(scores), self.p_upper(scores)))
        # NaN scores are rejected; exp underflow is floored so log(p) stays finite.
        return np.where(np.isnan(scores), 0.0, np.maximum(p, 1e-300))
