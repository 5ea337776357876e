"""Randomized smoothing (trustgc/trust/smoothing.py) against ground truth.

The bound's coverage is checked by simulation, and CERTIFY on a base classifier whose smoothed
version is known in closed form: f(x) = [x_0 > t] with t inside (0, 1).  Clipping to [0, 1] is
monotone and keeps t inside, so P(f(x + e) = 1) = Phi((x_0 - t) / sigma) exactly, and g's
decision boundary is the hyperplane x_0 = t: the largest correct radius is x_0 - t.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from trustgc.trust.smoothing import certify, clopper_pearson_lower, count_noisy_labels

pytestmark = pytest.mark.usefixtures("one_thread")


def test_clopper_pearson_lower_matches_closed_forms() -> None:
    # all successes: Beta(n, 1) has cdf q^n, so the bound is alpha^(1/n)
    assert clopper_pearson_lower(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100))
    assert clopper_pearson_lower(0, 50, 0.05) == 0.0
    # one success in one trial: Beta(1, 1) is uniform
    assert clopper_pearson_lower(1, 1, 0.2) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        clopper_pearson_lower(5, 4, 0.05)


def test_clopper_pearson_lower_covers_the_true_proportion_at_its_level() -> None:
    """The guarantee: P(bound > p) <= alpha.  2,000 binomial draws per p; the count of
    violations must stay under the 99.9 % quantile of Binomial(2000, alpha)."""
    rng = np.random.default_rng(0)
    alpha, trials, draws = 0.05, 60, 2000
    limit = stats.binom.ppf(0.999, draws, alpha)
    for p in (0.3, 0.7, 0.95):
        successes = rng.binomial(trials, p, size=draws)
        violations = sum(clopper_pearson_lower(int(k), trials, alpha) > p for k in successes)
        assert violations <= limit, (p, violations, limit)
        # and the bound is not trivially low: at 0.95 it is mostly above 0.8
    assert np.median([clopper_pearson_lower(int(k), trials, alpha) for k in successes]) > 0.8


def _threshold_classifier(t: float):
    def labels_of(x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0, 0, 0] > t).long()

    return labels_of


def test_noisy_counts_follow_the_closed_form() -> None:
    x = torch.full((1, 4, 4), 0.5)
    x[0, 0, 0] = 0.6
    sigma, t, num = 0.25, 0.45, 20_000
    counts = count_noisy_labels(
        _threshold_classifier(t), x, sigma, num, 2, 4096, torch.Generator().manual_seed(1)
    )
    expected = stats.norm.cdf((0.6 - t) / sigma)
    assert counts.sum() == num
    assert counts[1] / num == pytest.approx(expected, abs=4 * np.sqrt(expected / num))


@pytest.mark.parametrize("x0", [0.55, 0.7, 0.95])
def test_certified_radius_never_exceeds_the_true_one_and_approaches_it(x0: float) -> None:
    t, sigma = 0.45, 0.25
    x = torch.full((1, 4, 4), 0.5)
    x[0, 0, 0] = x0
    true_radius = x0 - t
    radii = []
    for seed in range(20):
        certificate = certify(
            _threshold_classifier(t),
            x,
            num_classes=2,
            sigma=sigma,
            n=2000,
            n0=100,
            alpha=0.001,
            batch_size=2000,
            generator=torch.Generator().manual_seed(seed),
        )
        assert certificate.predicted_index == 1
        assert certificate.radius <= true_radius  # fails with probability <= alpha per run
        radii.append(certificate.radius)
    # n = 2000 loses only a little: within a third of sigma of the truth
    assert np.median(radii) > true_radius - sigma / 3


def test_certify_abstains_on_a_coin_flip() -> None:
    x = torch.full((1, 4, 4), 0.5)
    x[0, 0, 0] = 0.45  # exactly on the boundary: p = 1/2
    certificate = certify(_threshold_classifier(0.45), x, 2, sigma=0.25, n=1000, n0=100)
    assert certificate.abstained and certificate.radius == 0.0
    assert certificate.p_lower < 0.5
