"""Classification, calibration and OoD-detection metrics (numpy only).

Each formula lives in exactly one function whose docstring states it. ``probs`` is always an
(N, K) array of class probabilities (rows sum to 1) and ``labels`` an (N,) integer array.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

try:  # exact binomial quantiles when scipy is available, normal approximation otherwise
    from scipy import stats as _scipy_stats
except ImportError:  # pragma: no cover - scipy is installed in the dev environment
    _scipy_stats = None

__all__ = [
    "AUTHORS_BIN_EDGES",
    "accuracy",
    "authors_calibration_errors",
    "binomial_interval",
    "overconfidence_error",
    "roc_auc",
    "top1_ece",
]

#: Bin edges of the IB-INN authors' calibration code (vislearn/IB-INN, evaluation/calibration.py):
#: 7 bins of width ~0.00714 on [-1e-6, 0.05], 15 bins of width 0.06 on [0.05, 0.95] and 7 mirrored
#: fine bins on [0.95, 1 + 1e-6]: 30 edges, 29 bins. Bins are [lo, hi) except the last, [lo, hi].
AUTHORS_BIN_EDGES: np.ndarray = np.concatenate(
    [
        np.linspace(-1e-6, 5e-2, 8),
        np.linspace(5e-2, 1 - 5e-2, 16)[1:-1],
        1.0 - np.linspace(5e-2, -1e-6, 8),
    ]
)
_MIN_BIN_COUNT = 20  # authors' code keeps only bins with more than 20 entries
_ROW_SUM_ATOL = 1e-3


def _check_probs_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must have shape (N, K) with N, K >= 1, got shape {p.shape}")
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must have shape ({p.shape[0]},), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, got {y.dtype}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {p.shape[1] - 1}], got range [{y.min()}, {y.max()}]"
        )
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0 + _ROW_SUM_ATOL:
        raise ValueError(
            f"probs must be finite and in [0, 1], got range [{np.nanmin(p)}, {np.nanmax(p)}]"
        )
    row_err = np.abs(p.sum(axis=1) - 1.0).max()
    if row_err > _ROW_SUM_ATOL:
        raise ValueError(
            f"probs rows must sum to 1 (atol {_ROW_SUM_ATOL}), max deviation is {row_err:.3g}"
        )
    return np.clip(p, 0.0, 1.0), y.astype(np.int64)


def accuracy(probs, labels) -> float:
    """Top-1 accuracy: ``mean_i [argmax_k probs[i, k] == labels[i]]`` (ties: lowest index)."""
    p, y = _check_probs_labels(probs, labels)
    return float(np.mean(p.argmax(axis=1) == y))


def top1_ece(probs, labels, num_bins: int = 15) -> float:
    """Usual top-1 expected calibration error (Guo et al. 2017).

    With confidence ``c_i = max_k probs[i, k]`` and correctness ``a_i = [argmax = label]``, the
    ``num_bins`` equal-width bins ``B_b = [b/B, (b+1)/B)`` (the last one closed, so ``c = 1``
    falls in it) give ``ECE = sum_b (n_b / N) |acc_b - conf_b|`` where ``acc_b`` and ``conf_b``
    are the means of ``a_i`` and ``c_i`` over the ``n_b`` predictions in bin ``b`` (empty bins
    contribute 0).
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
    p, y = _check_probs_labels(probs, labels)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, num_bins - 1)
    n_b = np.bincount(idx, minlength=num_bins).astype(np.float64)
    gap = np.abs(np.bincount(idx, correct, num_bins) - np.bincount(idx, conf, num_bins))
    # sum_b (n_b/N) |acc_b - conf_b| == sum_b |sum_{i in b} a_i - sum_{i in b} c_i| / N
    return float(gap[n_b > 0].sum() / conf.size)


def authors_calibration_errors(probs, labels, bin_edges=None) -> dict[str, float]:
    """ECE, MCE and ICE as computed by the IB-INN authors' code (one-vs-rest, all classes).

    Every entry ``probs[i, k]`` (all N*K of them) is paired with the indicator
    ``t_ik = [labels[i] == k]`` and histogrammed with ``bin_edges`` (default
    :data:`AUTHORS_BIN_EDGES`, 29 bins; bins ``[lo, hi)``, the last closed). Bins with
    ``n_b <= 20`` entries are dropped. For each kept bin ``b``: ``q_b = mean t_ik`` over its
    entries, ``p_b = (lo_b + hi_b) / 2`` (the bin centre, not the mean probability) and
    ``err_b = |q_b - p_b|``. Then

    - ``ece = sum_b n_b err_b / sum_b n_b`` (kept bins only),
    - ``mce = max_b err_b``,
    - ``ice = trapezoid integral of err_b over p_b`` (``np.trapz(err, x=p)`` in the authors'
      code: the area between the reliability curve and the diagonal; 0 with one kept bin).

    Returns ``{"ece", "mce", "ice"}``; all are NaN when no bin has more than 20 entries.
    """
    p, y = _check_probs_labels(probs, labels)
    edges = AUTHORS_BIN_EDGES if bin_edges is None else np.asarray(bin_edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bin_edges must be 1-D, strictly increasing, >= 2 edges, got {edges}")
    onehot = np.zeros_like(p)
    onehot[np.arange(y.size), y] = 1.0
    n_b, _ = np.histogram(p.ravel(), bins=edges)
    hits, _ = np.histogram(p.ravel(), bins=edges, weights=onehot.ravel())
    keep = n_b > _MIN_BIN_COUNT
    if not np.any(keep):
        return {"ece": float("nan"), "mce": float("nan"), "ice": float("nan")}
    centre = 0.5 * (edges[1:] + edges[:-1])[keep]
    err = np.abs(hits[keep] / n_b[keep] - centre)
    ice = float(np.sum(0.5 * (err[1:] + err[:-1]) * np.diff(centre)))
    return {
        "ece": float(np.sum(err * n_b[keep]) / np.sum(n_b[keep])),
        "mce": float(err.max()),
        "ice": ice,
    }


def overconfidence_error(probs, labels, critical_confidence: float = 0.997) -> float:
    """Overconfidence error (OCE, paper Sec. 5 / Table 2).

    ``OCE = mean_{i: c_i >= c_crit} [argmax_k probs[i, k] != labels[i]] / (1 - c_crit)`` with
    ``c_i = max_k probs[i, k]``: 1.0 means the confident predictions are calibrated at the
    critical level, 4.0 means they are wrong four times as often as they claim. Returns NaN when
    no prediction reaches ``c_crit``. (The authors' code uses ``c_i > c_crit``; the paper ``>=``.)
    """
    if not 0.0 < critical_confidence < 1.0:
        raise ValueError(f"critical_confidence must be in (0, 1), got {critical_confidence!r}")
    p, y = _check_probs_labels(probs, labels)
    confident = p.max(axis=1) >= critical_confidence
    if not np.any(confident):
        return float("nan")
    error_rate = np.mean(p[confident].argmax(axis=1) != y[confident])
    return float(error_rate / (1.0 - critical_confidence))


def _check_scores(name: str, scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} must be finite, got {int(np.sum(~np.isfinite(s)))} non-finite")
    return s


def roc_auc(scores_in, scores_out) -> float:
    """ROC-AUC of detecting OoD inputs (positives) by a score that is higher for OoD.

    ``AUC = P(s_out > s_in) + 0.5 P(s_out == s_in)`` over all (out, in) pairs, computed exactly
    in O(n log n) via the Mann-Whitney statistic: with mid-ranks ``r`` (ties share the average
    rank) of the pooled scores, ``AUC = (sum_{out} r - n_out (n_out + 1) / 2) / (n_out n_in)``.
    """
    s_in = _check_scores("scores_in", scores_in)
    s_out = _check_scores("scores_out", scores_out)
    pooled = np.concatenate([s_out, s_in])
    _, inverse, counts = np.unique(pooled, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # 1-based rank of each unique value's first copy
    mid_rank = first_rank + 0.5 * (counts - 1)
    rank_sum_out = mid_rank[inverse[: s_out.size]].sum()
    u_out = rank_sum_out - s_out.size * (s_out.size + 1) / 2.0
    return float(u_out / (s_out.size * s_in.size))


def binomial_interval(n: int, p: float, confidence: float = 0.99) -> tuple[float, float]:
    """Two-sided interval for the observed rate ``X / n`` of ``X ~ Binomial(n, p)``.

    With ``a = (1 - confidence) / 2``: ``lo = F^-1(a) / n`` and ``hi = G^-1(a) / n`` where
    ``F^-1(a) = min{k : P(X <= k) >= a}`` (``binom.ppf``) and ``G^-1(a) = min{k : P(X > k) <= a}``
    (``binom.isf``), so ``P(X/n < lo) < a`` and ``P(X/n > hi) <= a`` exactly. Without scipy:
    normal approximation ``p -/+ z_{1-a} sqrt(p (1 - p) / n)`` clipped to [0, 1].
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    alpha = (1.0 - confidence) / 2.0
    if _scipy_stats is not None:
        lo_k = _scipy_stats.binom.ppf(alpha, n, p)
        hi_k = _scipy_stats.binom.isf(alpha, n, p)
        return float(lo_k / n), float(hi_k / n)
    half = NormalDist().inv_cdf(1.0 - alpha) * float(np.sqrt(p * (1.0 - p) / n))
    return max(0.0, p - half), min(1.0, p + half)


def conformal_rejection_interval(
    m: int, n: int, alpha: float, side: str, confidence: float = 0.99
) -> tuple[int, int, int]:
    """(a, low, high): the interval for how many of m fresh in-distribution images a conformal
    p-value against a reference of n scores rejects at p < alpha.

    Given the reference, P(p < alpha) is Beta(a, n + 1 - a) with a / (n + 1) the largest
    reachable level below alpha (for the two-sided test, the two tails of a / 2 each), so the
    count is Beta-Binomial(m, a, n + 1 - a): wider than Binomial(m, alpha) when n is not much
    larger than m, since it carries the reference's sampling noise too.
    """
    from scipy import stats

    if side == "two_sided":  # p = min(1, 2 j / (n + 1)) < alpha  <=>  j < alpha (n + 1) / 2
        a = 2 * (int(np.ceil(alpha * (n + 1) / 2)) - 1)
    else:  # (1 + count) / (n + 1) < alpha
        a = int(np.ceil(alpha * (n + 1))) - 1
    law = stats.betabinom(m, a, n + 1 - a)
    tail = (1.0 - confidence) / 2.0
    return a, int(law.ppf(tail)), int(law.isf(tail))
