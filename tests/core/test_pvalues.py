"""Conservative empirical p-values (trustgc.trust.pvalues): hand cases, ties, validation, validity.

Validity ground truth: if a new score is exchangeable with the n reference scores and the law is
continuous, its rank among the n + 1 values is uniform, so P(p <= k / (n + 1)) = k / (n + 1)
exactly on the grid and P(p <= alpha) <= alpha everywhere.  Given one fixed reference, the
rejection rate is random: Beta(a, n + 1 - a) with a = alpha (n + 1) for alpha on the grid (for
the two-sided test the two tails add up to the same law), so the count of rejections among m
fresh scores is Beta-Binomial(m, a, n + 1 - a).  The tolerances below use that law, pooled over
independent reference draws.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from trustgc.trust.pvalues import EmpiricalReference

SIDES = ("upper", "lower", "two_sided")
ALPHAS = (0.01, 0.05, 0.1)


def _p(reference: list[float], side: str, scores) -> np.ndarray:
    return EmpiricalReference(np.asarray(reference, dtype=np.float64), side).p_value(
        np.asarray(scores, dtype=np.float64)
    )


# ------------------------------------------------------------------------------ hand cases


@pytest.mark.parametrize(
    ("score", "upper", "lower", "two_sided"),
    [
        # 2 of 4 reference values >= 2.5 and 2 <= 2.5: (1 + 2) / 5 both ways; 2 * 0.6 capped at 1
        (2.5, 3 / 5, 3 / 5, 1.0),
        # above everything: only the score itself is "at least as large"
        (10.0, 1 / 5, 5 / 5, 2 / 5),
        # below everything
        (-3.0, 5 / 5, 1 / 5, 2 / 5),
        (3.5, 2 / 5, 4 / 5, 4 / 5),
        # ties count as both "at least" and "at most": 2 -> {2, 3, 4} >= and {1, 2} <=
        (2.0, 4 / 5, 3 / 5, 1.0),
        (4.0, 2 / 5, 5 / 5, 4 / 5),
        (1.0, 5 / 5, 2 / 5, 4 / 5),
        (np.inf, 1 / 5, 5 / 5, 2 / 5),
        (-np.inf, 5 / 5, 1 / 5, 2 / 5),
    ],
)
def test_hand_case(score: float, upper: float, lower: float, two_sided: float) -> None:
    reference = [3.0, 1.0, 4.0, 2.0]  # unsorted on purpose
    ref = EmpiricalReference(np.asarray(reference), "upper")
    np.testing.assert_allclose(ref.p_upper(np.asarray([score])), [upper], rtol=0, atol=1e-15)
    np.testing.assert_allclose(ref.p_lower(np.asarray([score])), [lower], rtol=0, atol=1e-15)
    for side, expected in zip(SIDES, (upper, lower, two_sided), strict=True):
        np.testing.assert_allclose(_p(reference, side, [score]), [expected], rtol=0, atol=1e-15)


def test_ties_with_repeated_reference_values() -> None:
    reference = [1.0, 2.0, 2.0, 2.0, 3.0]  # n = 5
    # score 2: {2, 2, 2, 3} are >= (4) and {1, 2, 2, 2} are <= (4)
    np.testing.assert_allclose(_p(reference, "upper", [2.0]), [5 / 6], atol=1e-15)
    np.testing.assert_allclose(_p(reference, "lower", [2.0]), [5 / 6], atol=1e-15)
    np.testing.assert_allclose(_p(reference, "two_sided", [2.0]), [1.0], atol=1e-15)
    # just above / below the tie block
    np.testing.assert_allclose(_p(reference, "upper", [2.0 + 1e-12]), [2 / 6], atol=1e-15)
    np.testing.assert_allclose(_p(reference, "lower", [2.0 - 1e-12]), [2 / 6], atol=1e-15)


def test_batch_matches_brute_force_counts() -> None:
    rng = np.random.default_rng(3)
    reference = rng.integers(0, 20, 57).astype(np.float64)  # many ties
    scores = np.concatenate([rng.integers(-2, 23, 300).astype(np.float64), reference[:10]])
    at_least = (reference[None, :] >= scores[:, None]).sum(axis=1)
    at_most = (reference[None, :] <= scores[:, None]).sum(axis=1)
    upper = (1 + at_least) / (reference.size + 1)
    lower = (1 + at_most) / (reference.size + 1)
    expected = {
        "upper": upper,
        "lower": lower,
        "two_sided": np.minimum(1.0, 2 * np.minimum(upper, lower)),
    }
    for side in SIDES:
        p = EmpiricalReference(reference, side).p_value(scores)
        assert p.shape == scores.shape
        np.testing.assert_allclose(p, expected[side], rtol=0, atol=1e-15)


def test_p_values_lie_in_grid_and_unit_interval() -> None:
    rng = np.random.default_rng(4)
    reference = rng.normal(size=99)
    scores = rng.normal(0, 3, 1000)
    for side in SIDES:
        p = EmpiricalReference(reference, side).p_value(scores)
        assert p.min() >= 1 / 100 - 1e-15 and p.max() <= 1.0
        if side != "two_sided":
            np.testing.assert_allclose(p * 100, np.rint(p * 100), atol=1e-9)


def test_monotone_in_the_score() -> None:
    rng = np.random.default_rng(5)
    ref = rng.normal(size=200)
    grid = np.linspace(-5, 5, 2001)
    assert np.all(np.diff(EmpiricalReference(ref, "upper").p_value(grid)) <= 0)
    assert np.all(np.diff(EmpiricalReference(ref, "lower").p_value(grid)) >= 0)
    two = EmpiricalReference(ref, "two_sided").p_value(grid)
    median = np.median(ref)
    assert np.all(np.diff(two[grid < median - 0.1]) >= 0)
    assert np.all(np.diff(two[grid > median + 0.1]) <= 0)


@pytest.mark.parametrize("side", SIDES)
def test_nan_score_is_rejected(side: str) -> None:
    p = _p([1.0, 2.0, 3.0], side, [np.nan, 2.0, np.nan])
    assert p[0] == 0.0 and p[2] == 0.0
    assert p[1] > 0.0


def test_size_and_sorted_scores() -> None:
    ref = EmpiricalReference(np.asarray([3.0, 1.0, 2.0]), "lower")
    assert ref.size == 3
    np.testing.assert_array_equal(ref.sorted_scores, [1.0, 2.0, 3.0])
    assert ref.side == "lower"
    assert ref.p_value(np.asarray([0.5, 5.0])).dtype == np.float64


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("scores", "side", "match"),
    [
        (np.asarray([]), "upper", "non-empty 1-D"),
        (np.zeros((2, 2)), "upper", "non-empty 1-D"),
        (np.asarray(1.0), "upper", "non-empty 1-D"),
        (np.asarray([1.0, np.nan]), "upper", "finite"),
        (np.asarray([1.0, np.inf]), "lower", "finite"),
        (np.asarray([-np.inf, 1.0]), "two_sided", "finite"),
        (np.asarray([1.0, 2.0]), "both", "side must be"),
        (np.asarray([1.0, 2.0]), "Upper", "side must be"),
    ],
)
def test_invalid_reference_raises(scores, side, match) -> None:
    with pytest.raises(ValueError, match=match):
        EmpiricalReference(scores, side)


# ------------------------------------------------------------------------------ validity


def _rejection_counts(distribution, n: int, m: int, seeds, side: str, alpha: float):
    counts = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        reference = distribution(rng, n)
        scores = distribution(rng, m)
        p = EmpiricalReference(reference, side).p_value(scores)
        counts.append(int(np.sum(p <= alpha + 1e-12)))
    return np.asarray(counts)


DISTRIBUTIONS = {
    "normal": lambda rng, size: rng.normal(size=size),
    "exponential": lambda rng, size: rng.exponential(size=size),
    "cauchy": lambda rng, size: rng.standard_cauchy(size=size),
}


@pytest.mark.parametrize("distribution", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_rejection_rate_is_alpha_for_exchangeable_scores(distribution, side, alpha) -> None:
    """n = 999: every alpha here is on the grid (k / 1000), so P(p <= alpha) = alpha exactly."""
    n, m, seeds = 999, 20_000, range(25)
    counts = _rejection_counts(DISTRIBUTIONS[distribution], n, m, seeds, side, alpha)
    a = alpha * (n + 1)
    assert abs(a - round(a)) < 1e-9
    law = stats.betabinom(m, round(a), n + 1 - round(a))
    rate = counts.sum() / (m * len(counts))
    sd = math.sqrt(law.var() * len(counts)) / (m * len(counts))
    assert rate <= alpha + 3 * sd, (rate, alpha, sd)  # valid
    assert rate >= alpha - 3 * sd, (rate, alpha, sd)  # and not needlessly conservative
    # Each reference on its own: the count lies in the Beta-Binomial's 99.99% range.
    low, high = law.ppf(5e-5), law.isf(5e-5)
    assert np.all((counts >= low) & (counts <= high)), (counts, low, high)


@pytest.mark.parametrize("side", SIDES)
def test_p_values_are_uniform_on_the_grid(side: str) -> None:
    """Pooled over references, the empirical CDF at every grid point k / (n + 1) is k / (n + 1)."""
    n, m, draws = 199, 5_000, 200
    grid = np.arange(1, n + 2) / (n + 1)
    below = np.zeros(grid.size)
    for seed in range(draws):
        rng = np.random.default_rng(1000 + seed)
        reference, scores = rng.normal(size=n), rng.normal(size=m)
        p = np.sort(EmpiricalReference(reference, side).p_value(scores))
        below += np.searchsorted(p, grid + 1e-12, side="right")
    cdf = below / (m * draws)
    if side == "two_sided":  # only even multiples of 1 / (n + 1) are reachable, each with its k
        np.testing.assert_allclose(cdf[1::2], grid[1::2], atol=0.015)
        assert np.all(cdf <= grid + 0.01)
    else:
        # KS distance on the grid; the pooled CDF's sd is at most sqrt(0.25 / (n + 2) / draws)
        # ~ 0.0025 (at the median), so 0.015 is ~6 sd
        assert np.max(np.abs(cdf - grid)) < 0.015, np.max(np.abs(cdf - grid))


@pytest.mark.parametrize("side", SIDES)
def test_conservative_off_grid_and_with_ties(side: str) -> None:
    """Off the grid (alpha (n+1) not an integer) and for discrete scores, P(p <= alpha) < alpha.

    Integer-valued scores tie constantly: counting ties as "at least"/"at most" keeps the test
    valid; counting them the other way would reject far more than alpha.
    """
    n, m, alpha = 99, 20_000, 0.0549  # floor(alpha (n + 1)) = 5: true level 0.05
    counts = []
    for seed in range(60):
        rng = np.random.default_rng(seed)
        reference = rng.poisson(3.0, n).astype(np.float64)
        scores = rng.poisson(3.0, m).astype(np.float64)
        counts.append(np.sum(EmpiricalReference(reference, side).p_value(scores) <= alpha))
    rate = np.sum(counts) / (m * len(counts))
    assert rate <= 0.05, rate
    continuous = _rejection_counts(DISTRIBUTIONS["normal"], n, m, range(60), side, alpha)
    level = 0.05 if side != "two_sided" else 0.04  # two-sided: 2 * floor(0.02745 * 100) / 100
    sd = math.sqrt(level * (1 - level) * (1 / (n + 2) + 1 / m) / 60)
    assert abs(continuous.sum() / (m * 60) - level) < 4 * sd


# ------------------------------------------------------------------------------ linear envelope


def _linear(reference, side: str, tail_extrapolation: bool = False) -> EmpiricalReference:
    return EmpiricalReference(
        np.asarray(reference, dtype=np.float64),
        side,
        tail_extrapolation=tail_extrapolation,
        interpolation="linear",
    )


@pytest.mark.parametrize(
    ("score", "upper", "lower"),
    [
        # reference 1, 2, 3, 4 (n = 4): the knots carry the step p-value at each value ...
        (1.0, 5 / 5, 2 / 5),
        (2.0, 4 / 5, 3 / 5),
        (4.0, 2 / 5, 5 / 5),
        # ... in between the line joins them (2.5: halfway between 4/5 and 3/5) ...
        (2.5, 3.5 / 5, 3.5 / 5),
        (3.25, 2.75 / 5, 4.25 / 5),
        # ... and outside it holds the outermost knot's value
        (-3.0, 5 / 5, 2 / 5),
        (10.0, 2 / 5, 5 / 5),
    ],
)
def test_linear_hand_case(score: float, upper: float, lower: float) -> None:
    ref = _linear([3.0, 1.0, 4.0, 2.0], "upper")
    np.testing.assert_allclose(ref.p_upper(np.asarray([score])), [upper], atol=1e-15)
    np.testing.assert_allclose(ref.p_lower(np.asarray([score])), [lower], atol=1e-15)
    two = _linear([3.0, 1.0, 4.0, 2.0], "two_sided").p_value(np.asarray([score]))
    np.testing.assert_allclose(two, [min(1.0, 2 * min(upper, lower))], atol=1e-15)


def test_linear_is_the_smallest_continuous_bound_above_the_step() -> None:
    """Never below the step p-value (so exactly as valid), equal to it at every reference
    value, and above it by at most (size of the tie block) / (n + 1) in between."""
    rng = np.random.default_rng(11)
    reference = np.concatenate([rng.normal(size=300), np.full(4, 0.5)])  # one tie block of 5
    grid = np.sort(np.concatenate([np.linspace(-5, 5, 20_001), reference]))
    n = reference.size
    for side in ("upper", "lower"):
        step = EmpiricalReference(reference, side).p_value(grid)
        linear = _linear(reference, side).p_value(grid)
        assert np.all(linear >= step - 1e-15)
        at_reference = np.isin(grid, reference)
        np.testing.assert_allclose(linear[at_reference], step[at_reference], atol=1e-15)
        ties = np.abs(grid - 0.5) < 0.05  # the intervals next to the tie block
        assert np.max(linear[~ties] - step[~ties]) <= 1 / (n + 1) + 1e-12
        assert np.max(linear - step) <= 5 / (n + 1) + 1e-12


@pytest.mark.parametrize("tail_extrapolation", [False, True])
@pytest.mark.parametrize("side", SIDES)
def test_linear_is_continuous(side: str, tail_extrapolation: bool) -> None:
    """Lipschitz: a score moving by h moves p by at most h / (smallest reference gap) / (n + 1)
    (times 2 for the two-sided test); the step version jumps by 1 / (n + 1)."""
    rng = np.random.default_rng(12)
    reference = rng.normal(size=400)
    ref = _linear(reference, side, tail_extrapolation)
    grid = np.linspace(-8, 8, 400_001)
    h = grid[1] - grid[0]
    gaps = np.diff(np.sort(reference))
    bound = 2 * h / gaps.min() / (reference.size + 1) + 1e-12
    assert np.max(np.abs(np.diff(ref.p_value(grid)))) <= bound
    step_jumps = np.abs(np.diff(EmpiricalReference(reference, side).p_value(grid)))
    assert step_jumps.max() >= 1 / (reference.size + 1) - 1e-12


def test_linear_tails_decay_from_the_outermost_knot() -> None:
    reference = np.arange(1.0, 101.0)  # tail scale: the mean excess of the top 50 = 24.5
    ref = _linear(reference, "upper", tail_extrapolation=True)
    np.testing.assert_allclose(ref.p_upper(np.asarray([100.0])), [2 / 101], atol=1e-15)
    np.testing.assert_allclose(
        ref.p_upper(np.asarray([100.0 + 24.5])), [2 / 101 * math.exp(-1)], rtol=1e-12
    )
    np.testing.assert_allclose(
        ref.p_lower(np.asarray([1.0 - 49.0])), [2 / 101 * math.exp(-2)], rtol=1e-12
    )
    assert ref.p_value(np.asarray([np.inf]))[0] > 0  # floored, so -log p stays finite


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("interpolation", ["step", "linear"])
def test_exact_level_over_the_rank_slots(side: str, interpolation: str) -> None:
    """Ground truth without sampling noise: a continuous score exchangeable with n reference
    values falls into each of the n + 1 gaps between them (below the minimum and above the
    maximum included) with probability 1 / (n + 1).  One score per gap therefore gives the exact
    rejection probability: k / (n + 1) for the step p-value at alpha = k / (n + 1), one grid step
    less, (k - 1) / (n + 1), for the linear envelope (two-sided: per tail, floor(k / 2) steps
    and one less)."""
    rng = np.random.default_rng(13)
    n = 999
    reference = np.sort(rng.normal(size=n))
    slots = np.concatenate([[reference[0] - 1], (reference[1:] + reference[:-1]) / 2])
    slots = np.concatenate([slots, [reference[-1] + 1]])
    ref = EmpiricalReference(reference, side, interpolation=interpolation)
    p = ref.p_value(slots)
    for k in (1, 10, 50, 100, 500):
        per_tail = k if side != "two_sided" else 2 * (k // 2)
        expected = (
            per_tail if interpolation == "step" else per_tail - (1 if side != "two_sided" else 2)
        )
        rejected = int(np.sum(p <= k / (n + 1) + 1e-12))
        assert rejected == max(expected, 0), (k, rejected, expected)


def test_interpolation_must_be_known() -> None:
    with pytest.raises(ValueError, match="interpolation must be"):
        EmpiricalReference(np.asarray([1.0, 2.0]), "upper", interpolation="cubic")
