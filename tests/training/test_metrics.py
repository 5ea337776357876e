"""Tests for training.metrics: every expected value is computed by hand or by brute force."""

import math

import numpy as np
import pytest
from scipy import stats

from training import metrics
from training.metrics import (
    AUTHORS_BIN_EDGES,
    accuracy,
    authors_calibration_errors,
    binomial_interval,
    overconfidence_error,
    roc_auc,
    top1_ece,
)


def _binary(conf_class0, labels):
    """Two-class probs with probs[:, 0] = conf_class0."""
    c = np.asarray(conf_class0, dtype=np.float64)
    return np.stack([c, 1.0 - c], axis=1), np.asarray(labels, dtype=np.int64)


def _calibrated(n, k, rng, sharpen=1.0):
    """Dirichlet probs with labels sampled from them; sharpen > 1 makes the probs overconfident."""
    probs = rng.dirichlet(np.full(k, 0.5), size=n)
    u = rng.random(n)[:, None]
    labels = np.minimum((u > np.cumsum(probs, axis=1)).sum(axis=1), k - 1)
    sharp = probs**sharpen
    return probs, sharp / sharp.sum(axis=1, keepdims=True), labels


def test_accuracy_hand_case():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    labels = np.array([0, 1, 0, 1])  # right, right, wrong (pred 2), wrong (pred 0)
    assert accuracy(probs, labels) == 0.5


def test_top1_ece_hand_case():
    # bin 13 = [13/15, 14/15): confs 0.9, 0.9, both right -> |1 - 0.9| = 0.1, weight 2/4
    # bin 9 = [0.6, 0.667): confs 0.62, 0.64, one right -> |0.5 - 0.63| = 0.13, weight 2/4
    probs, labels = _binary([0.9, 0.9, 0.62, 0.64], [0, 0, 0, 1])
    assert top1_ece(probs, labels) == pytest.approx(0.5 * 0.1 + 0.5 * 0.13, abs=1e-12)
    # a single bin (num_bins=1): |acc - mean conf| = |0.75 - 0.765|
    assert top1_ece(probs, labels, num_bins=1) == pytest.approx(0.015, abs=1e-12)


def test_top1_ece_confidence_one_goes_in_last_bin():
    probs, labels = _binary([1.0, 1.0], [0, 1])  # acc 0.5, conf 1.0
    assert top1_ece(probs, labels) == pytest.approx(0.5, abs=1e-12)


def test_top1_ece_calibrated_vs_overconfident():
    rng = np.random.default_rng(0)
    probs, sharp, labels = _calibrated(200_000, 10, rng, sharpen=3.0)
    assert top1_ece(probs, labels) < 0.01
    assert top1_ece(sharp, labels) > 0.05


def test_overconfidence_error_hand_case():
    probs = np.full((1000, 2), 0.0005)
    probs[:, 0] = 0.9995  # conf 0.9995 >= 0.997: all 1000 count
    labels = np.zeros(1000, dtype=np.int64)
    labels[:3] = 1  # 3 wrong: error rate 0.003, / (1 - 0.997) = 1.0
    assert overconfidence_error(probs, labels) == pytest.approx(1.0, rel=1e-9)
    labels[:12] = 1  # 12 wrong: 0.012 / 0.003 = 4.0
    assert overconfidence_error(probs, labels) == pytest.approx(4.0, rel=1e-9)
    # only the confident rows count: 1000 extra unconfident rows, all wrong, change nothing
    extra, extra_labels = _binary(np.full(1000, 0.6), np.ones(1000))
    both = np.concatenate([probs, extra]), np.concatenate([labels, extra_labels])
    assert overconfidence_error(*both) == pytest.approx(4.0, rel=1e-9)
    # another critical level: 12 wrong / 1000 at c_crit 0.99 -> 0.012 / 0.01
    assert overconfidence_error(probs, labels, 0.99) == pytest.approx(1.2, rel=1e-9)


def test_overconfidence_error_nan_when_nothing_is_confident():
    probs, labels = _binary([0.9, 0.99, 0.996], [0, 0, 1])
    assert math.isnan(overconfidence_error(probs, labels))


def test_authors_edges_match_authors_construction():
    assert AUTHORS_BIN_EDGES.shape == (30,)
    assert AUTHORS_BIN_EDGES[0] == -1e-6 and AUTHORS_BIN_EDGES[-1] == pytest.approx(1 + 1e-6)
    assert np.all(np.diff(AUTHORS_BIN_EDGES) > 0)
    np.testing.assert_allclose(AUTHORS_BIN_EDGES[7:23], np.linspace(0.05, 0.95, 16), atol=1e-12)


def test_authors_calibration_all_entries_in_one_bin():
    # K=4 uniform probs: all 400 entries are 0.25, in bin [0.23, 0.29) with centre 0.26;
    # the indicator mean is exactly 1/4 -> err = 0.01; ICE of one point is 0
    probs = np.full((100, 4), 0.25)
    labels = np.arange(100) % 4
    out = authors_calibration_errors(probs, labels)
    assert out["ece"] == pytest.approx(0.01, abs=1e-12)
    assert out["mce"] == pytest.approx(0.01, abs=1e-12)
    assert out["ice"] == 0.0


def test_authors_calibration_two_bins_hand_case():
    # 100 rows [0.8, 0.2], 70 labelled 0. Bin centre 0.8: 100 entries, indicator mean 0.7,
    # err 0.1. Bin centre 0.2: indicator mean 0.3, err 0.1. ICE = trapezoid over x in [0.2, 0.8].
    probs, labels = _binary(np.full(100, 0.8), np.r_[np.zeros(70), np.ones(30)])
    out = authors_calibration_errors(probs, labels)
    assert out["ece"] == pytest.approx(0.1, abs=1e-12)
    assert out["mce"] == pytest.approx(0.1, abs=1e-12)
    assert out["ice"] == pytest.approx(0.1 * 0.6, abs=1e-12)


def test_authors_calibration_drops_bins_with_at_most_20_entries():
    probs, labels = _binary(np.full(20, 0.8), np.zeros(20))  # 20 entries per bin: all dropped
    assert all(math.isnan(v) for v in authors_calibration_errors(probs, labels).values())
    # 21 rows [0.8, 0.2] labelled 0: bins centred 0.8 (mean 1) and 0.2 (mean 0), 21 entries
    # each, err 0.2, kept. 20 rows [0.6, 0.4]: 20 entries in each of their bins, dropped.
    p1, y1 = _binary(np.full(21, 0.8), np.zeros(21))
    p2, y2 = _binary(np.full(20, 0.6), np.ones(20))
    out = authors_calibration_errors(np.concatenate([p1, p2]), np.concatenate([y1, y2]))
    assert out["mce"] == pytest.approx(0.2, abs=1e-12)  # only the 0.8 and 0.2 bins kept
    assert out["ece"] == pytest.approx(0.2, abs=1e-12)


def test_authors_calibration_calibrated_data_is_small():
    rng = np.random.default_rng(1)
    probs, sharp, labels = _calibrated(200_000, 10, rng, sharpen=3.0)
    assert authors_calibration_errors(probs, labels)["ece"] < 0.01
    assert authors_calibration_errors(sharp, labels)["ece"] > 0.05


def test_roc_auc_extremes_and_ties():
    assert roc_auc([0.1, 0.2, 0.3], [0.5, 0.9]) == 1.0
    assert roc_auc([0.5, 0.9], [0.1, 0.2, 0.3]) == 0.0
    assert roc_auc(np.ones(7), np.ones(5)) == 0.5
    # pairs (out, in): 0.4 vs 0.1 -> 1, vs 0.4 -> 1/2 twice; 0.8 beats all three -> 5 / 6
    assert roc_auc([0.1, 0.4, 0.4], [0.4, 0.8]) == pytest.approx(5 / 6, abs=1e-12)


def test_roc_auc_matches_brute_force_pair_count():
    rng = np.random.default_rng(2)
    s_in = rng.integers(0, 20, size=300).astype(float)  # integers: many ties
    s_out = rng.integers(5, 25, size=200).astype(float)
    diff = s_out[:, None] - s_in[None, :]
    brute = (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size
    assert roc_auc(s_in, s_out) == pytest.approx(brute, abs=1e-12)
    c_in, c_out = rng.normal(size=500), rng.normal(0.5, 1.0, size=400)
    diff = c_out[:, None] - c_in[None, :]
    assert roc_auc(c_in, c_out) == pytest.approx(np.mean(diff > 0), abs=1e-12)


def test_binomial_interval_matches_normal_width_and_tail_bounds():
    lo, hi = binomial_interval(10_000, 0.05)
    half = 2.5758 * math.sqrt(0.05 * 0.95 / 10_000)  # ~0.00561
    assert lo < 0.05 < hi
    assert lo == pytest.approx(0.05 - half, abs=5e-4)
    assert hi == pytest.approx(0.05 + half, abs=5e-4)
    # the exact tail guarantees: P(X < lo n) <= 0.005 and P(X > hi n) <= 0.005
    assert stats.binom.cdf(round(lo * 10_000) - 1, 10_000, 0.05) <= 0.005
    assert stats.binom.sf(round(hi * 10_000), 10_000, 0.05) <= 0.005


def test_binomial_interval_coverage_by_simulation():
    n, p = 2_000, 0.02
    lo, hi = binomial_interval(n, p, confidence=0.99)
    rates = np.random.default_rng(3).binomial(n, p, size=2_000) / n
    assert np.mean((rates < lo) | (rates > hi)) <= 0.015


def test_binomial_interval_normal_fallback(monkeypatch):
    monkeypatch.setattr(metrics, "_scipy_stats", None)
    lo, hi = binomial_interval(10_000, 0.05)
    half = 2.5758293 * math.sqrt(0.05 * 0.95 / 10_000)
    assert (lo, hi) == pytest.approx((0.05 - half, 0.05 + half), abs=1e-7)
    assert binomial_interval(10, 0.0) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.full(3, 1 / 3), np.array([0]), "shape"),
        (np.full((2, 3), 1 / 3), np.array([0]), r"shape \(2,\)"),
        (np.full((2, 3), 1 / 3), np.array([0.0, 1.0]), "integer"),
        (np.full((2, 3), 1 / 3), np.array([0, 3]), r"\[0, 2\]"),
        (np.full((2, 3), 0.5), np.array([0, 1]), "sum to 1"),
        (np.array([[1.5, -0.5]]), np.array([0]), "in \\[0, 1\\]"),
        (np.array([[np.nan, 1.0]]), np.array([0]), "finite"),
    ],
)
def test_probs_labels_validation(probs, labels, match):
    for fn in (accuracy, top1_ece, authors_calibration_errors, overconfidence_error):
        with pytest.raises(ValueError, match=match):
            fn(probs, labels)


def test_other_validation():
    probs, labels = _binary([0.9], [0])
    with pytest.raises(ValueError, match="num_bins"):
        top1_ece(probs, labels, num_bins=0)
    with pytest.raises(ValueError, match="critical_confidence"):
        overconfidence_error(probs, labels, critical_confidence=1.0)
    with pytest.raises(ValueError, match="non-empty"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([0.1], [np.inf])
    with pytest.raises(ValueError, match="n must"):
        binomial_interval(0, 0.5)
    with pytest.raises(ValueError, match="p must"):
        binomial_interval(10, 1.5)
    with pytest.raises(ValueError, match="confidence"):
        binomial_interval(10, 0.5, confidence=1.0)


def test_conformal_rejection_interval_covers_simulated_counts() -> None:
    """Ground truth by simulation: a reference of n exchangeable scores and m fresh ones; the
    count of fresh p-values below alpha falls inside the 99 % interval in about 99 % of draws
    (at least 97 % of 400 here), for both sides of the test."""
    from training.metrics import conformal_rejection_interval

    rng = np.random.default_rng(0)
    n, m, alpha = 200, 500, 0.05
    for side in ("upper", "two_sided"):
        _, low, high = conformal_rejection_interval(m, n, alpha, side)
        inside = 0
        for _ in range(400):
            reference = np.sort(rng.random(n))
            fresh = rng.random(m)
            above = n - np.searchsorted(reference, fresh)  # reference scores >= each fresh one
            p_upper = (1 + above) / (n + 1)
            if side == "upper":
                p = p_upper
            else:
                p_lower = (1 + n - above) / (n + 1)
                p = np.minimum(1.0, 2 * np.minimum(p_upper, p_lower))
            inside += low <= int(np.sum(p < alpha)) <= high
        assert inside >= 0.97 * 400, (side, inside, low, high)
