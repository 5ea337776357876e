"""The trust layer on a tiny randomised IB-INN: p-value validity, calibration, Predictor.

Ground truth for validity: images drawn from the model's own mixture (latents from the head,
inverted through the flow) are i.i.d., so their statistics are exchangeable with a reference
built from other draws; the rejection rate at alpha must follow the conformal law.  Given the
reference (size n) the rate is Beta(a, n + 1 - a) with a = floor(alpha (n + 1)) (two-sided: the
two tails of floor(alpha / 2 (n + 1)) each add up), so the count among m fresh draws is
Beta-Binomial(m, a, n + 1 - a): a plain binomial interval ignores the reference's own noise
(here the larger part) and would be too narrow.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from trustgc.artifact import ModelManifest, save_model
from trustgc.config import load_model_config
from trustgc.ibinn import IBINN
from trustgc.inference import ModelOutputs, model_outputs, score_batch
from trustgc.preprocess import pixels_to_tensor, pixels_to_unit
from trustgc.trust.calibration import (
    CALIBRATION_FILE,
    DEFAULT_INTERPOLATION,
    Calibration,
    ReferenceDistribution,
    fit_calibration,
    load_calibration,
    save_calibration,
)
from trustgc.trust.predictor import Decision, Predictor
from trustgc.trust.statistics import (
    ATTACK_STATISTIC,
    COMBINATIONS,
    PAPER_STATISTIC,
    PRODUCTION_OOD_STATISTIC,
    STATISTICS,
    computable,
    compute_statistics,
)

OOD_COMPONENTS = COMBINATIONS[PRODUCTION_OOD_STATISTIC].components
ATTACK_COMPONENTS = COMBINATIONS[ATTACK_STATISTIC].components
COMBINED_COMPONENTS = tuple(sorted({*OOD_COMPONENTS, *ATTACK_COMPONENTS}))  # served, no background
ALPHAS = (0.01, 0.05, 0.1)
PIXEL_FREE = ("typicality", "class_distance", "max_posterior")  # no uint8 pixels needed


def _count_interval(n: int, m: int, alpha: float, side: str, confidence: float):
    """Two-sided interval for the number of p <= alpha among m fresh exchangeable scores."""
    if side == "two_sided":
        a = 2 * math.floor(alpha / 2 * (n + 1) + 1e-9)
    else:
        a = math.floor(alpha * (n + 1) + 1e-9)
    law = stats.betabinom(m, a, n + 1 - a)
    tail = (1 - confidence) / 2
    return int(law.ppf(tail)), int(law.isf(tail)), a / (n + 1)


# ------------------------------------------------------------------------------ fixtures


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_model(num_classes: int = 4) -> IBINN:
    torch.manual_seed(0)
    net = IBINN(load_model_config("tiny", num_classes=num_classes)).eval()
    with torch.no_grad():
        for parameter in net.parameters():  # prior_logits too: a non-uniform mixture
            parameter.add_(0.05 * torch.randn_like(parameter))
    assert not torch.allclose(net.head.log_prior(), net.head.log_prior()[0])
    return net


def _manifest(net: IBINN) -> ModelManifest:
    return ModelManifest(
        name="tiny",
        config=net.config,
        class_names=tuple("abcdefgh"[: net.config.num_classes]),
        training={"dataset": "synthetic", "calibration_size": 32, "calibration_seed": 0},
    )


@pytest.fixture(scope="module")
def model() -> IBINN:
    return _tiny_model()


@pytest.fixture(scope="module")
def manifest(model) -> ModelManifest:
    return _manifest(model)


def _mixture_outputs(net: IBINN, count: int, seed: int, temperature: float = 1.0):
    """Continuous images drawn from q(x) = sum_y p(y) q(x|y) and their model outputs."""
    torch.manual_seed(seed)
    labels = torch.multinomial(net.head.log_prior().exp().detach(), count, replacement=True)
    spec = net.config.input
    images = torch.empty(count, spec.channels, spec.height, spec.width)
    with torch.no_grad():
        for k in range(net.config.num_classes):
            chosen = labels == k
            if chosen.any():
                images[chosen] = net.sample(k, int(chosen.sum()), temperature)
        scores = score_batch(net, images)  # the serving path: float64 head
    return ModelOutputs(**{key: value.numpy() for key, value in scores.items()}, dim=net.dim)


def _pixel_free_statistics(outputs: ModelOutputs) -> dict[str, np.ndarray]:
    return {name: STATISTICS[name](outputs, None) for name in PIXEL_FREE}


@pytest.fixture(scope="module")
def mixture_statistics(model):
    reference = _pixel_free_statistics(_mixture_outputs(model, 2000, seed=1))
    fresh = _pixel_free_statistics(_mixture_outputs(model, 4000, seed=2))
    return reference, fresh


def _nchw(dataset) -> np.ndarray:
    return pixels_to_tensor(dataset.images).numpy()


def _dataset(make_images, count: int, seed: int) -> SimpleNamespace:
    """i.i.d. uint8 images stored channels-last like a data set's ``images`` (N, 8, 8, 1)."""
    return SimpleNamespace(
        images=np.ascontiguousarray(make_images(count, seed).transpose(0, 2, 3, 1))
    )


def dataset_statistics(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every statistic a model without a background flow serves, for channels-last images."""
    pixels = pixels_to_tensor(images)
    outputs = model_outputs(model, pixels)
    return compute_statistics(outputs, pixels.numpy(), computable(has_background=False))


@pytest.fixture(scope="module")
def fitted(model, make_images):
    """fit_calibration on blob images: part A 400, part B 1200 images."""
    calibration_set = _dataset(make_images, 1600, seed=10)
    statistics = dataset_statistics(model, calibration_set.images)
    a = {name: values[:400] for name, values in statistics.items()}
    b = {name: values[400:] for name, values in statistics.items()}
    calibration = fit_calibration(a, b, ood_alpha=0.05, attack_alpha=0.05, split={"part_a": 400})
    return calibration, a, b


@pytest.fixture(scope="module")
def fresh_synthetic(model, make_images):
    dataset = _dataset(make_images, 2000, seed=11)
    return dataset, dataset_statistics(model, dataset.images)


@pytest.fixture(scope="module")
def predictor(model, manifest, fitted) -> Predictor:
    return Predictor(model, manifest, fitted[0])


# ------------------------------------------------------------------------------ validity


def test_samples_are_continuous_and_statistics_finite(mixture_statistics) -> None:
    reference, fresh = mixture_statistics
    for statistics in (reference, fresh):
        for name, values in statistics.items():
            assert np.all(np.isfinite(values)), name
            assert np.unique(values).size > 0.99 * values.size, name  # continuous: no ties
        assert np.all(statistics["max_posterior"] >= 0.0)
    # class_distance of N(mu_y, I) draws in D = 64 dims is chi^2_64 / 64 (up to the few
    # samples whose argmax class is not the one drawn): mean 1, sd sqrt(2 / 64)
    assert abs(np.median(fresh["class_distance"]) - 1.0) < 0.05
    assert abs(np.std(fresh["class_distance"]) - math.sqrt(2 / 64)) < 0.03


def test_max_posterior_keeps_the_digits_of_confident_posteriors() -> None:
    """-log q(top|x) = -log1p(-sum of the others): exact to float64 precision even where
    q(top|x) = 1 - 1e-13 rounds to 1 in -log(q(top|x)) computed directly."""
    logits = np.asarray([[0.0, -30.0, -35.0], [-40.0, 0.0, -31.0], [0.0, -0.5, -3.0]])
    log_posterior = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    outputs = ModelOutputs(log_posterior, None, None, None, dim=4)
    value = STATISTICS["max_posterior"](outputs, None)
    others = np.exp(-30.0) + np.exp(-35.0)
    np.testing.assert_allclose(value[0], others, rtol=1e-9)  # log1p(x) = x to 1e-13 here
    np.testing.assert_allclose(value[1], np.exp(-31.0) + np.exp(-40.0), rtol=1e-9)
    np.testing.assert_allclose(value[2], -log_posterior[2, 0], rtol=1e-12)  # not confident


def test_logit_margin_is_the_gap_between_the_top_two_logits() -> None:
    """log q(top|x) - log q(second|x) = l_top - l_second: the normaliser cancels, and so does
    any shift of the logits; order within a row does not matter."""
    logits = np.asarray([[2.0, -1.0, 0.5], [-400.0, -390.0, -395.5], [1.0, 1.0, -3.0]])
    log_posterior = (
        logits
        - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))[:, None]
        - logits.max(1, keepdims=True)
    )
    outputs = ModelOutputs(log_posterior, None, None, None, dim=4)
    np.testing.assert_allclose(
        STATISTICS["logit_margin"](outputs, None), [1.5, 5.5, 0.0], atol=1e-12
    )


@pytest.mark.parametrize("statistic", PIXEL_FREE)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_p_values_valid_on_the_models_own_mixture(mixture_statistics, statistic, alpha) -> None:
    reference, fresh = mixture_statistics
    side = STATISTICS[statistic].side
    p = ReferenceDistribution.fit(statistic, side, reference[statistic]).reference()
    count = int(np.sum(p.p_value(fresh[statistic]) <= alpha))
    n, m = reference[statistic].size, fresh[statistic].size
    low, high, level = _count_interval(n, m, alpha, side, 0.999)
    assert low <= count <= high, (statistic, alpha, count / m, low / m, high / m)
    assert abs(level - alpha) < 1e-3


def test_p_values_reject_samples_from_a_hotter_model(model, mixture_statistics) -> None:
    """Power check: latents at temperature 1.3 are far from typical, so most are rejected."""
    reference, _ = mixture_statistics
    hot = _pixel_free_statistics(_mixture_outputs(model, 400, seed=3, temperature=1.3))
    for statistic in ("typicality", "class_distance"):
        side = STATISTICS[statistic].side
        p = ReferenceDistribution.fit(statistic, side, reference[statistic]).reference()
        assert np.mean(p.p_value(hot[statistic]) <= 0.05) > 0.5, statistic


def test_production_p_value_valid_on_fresh_synthetic_data(fitted, fresh_synthetic, predictor):
    calibration, _, b = fitted
    _, statistics = fresh_synthetic
    p = predictor.p_values(statistics)
    n, m = b["typicality"].size, statistics["typicality"].size
    for alpha in ALPHAS:
        for name in (PRODUCTION_OOD_STATISTIC, ATTACK_STATISTIC):  # both calibrated on part B
            low, high, _ = _count_interval(n, m, alpha, "upper", 0.999)
            count = int(np.sum(p[name] <= alpha))
            assert low <= count <= high, (name, alpha, count / m)


# ------------------------------------------------------------------------------ fit_calibration


def test_fit_calibration_structure(fitted) -> None:
    calibration, a, b = fitted
    assert calibration.ood_alpha == 0.05 and calibration.attack_alpha == 0.05
    assert calibration.ood_statistic == PRODUCTION_OOD_STATISTIC
    assert calibration.attack_statistic == ATTACK_STATISTIC
    # every statistic a model without a background can compute: the served components, the
    # paper's test and neighbour_correlation (served only beside a background, reported here)
    assert set(calibration.components) == set(computable(False))
    assert set(COMBINED_COMPONENTS) | {PAPER_STATISTIC} < set(computable(False))
    assert set(COMBINED_COMPONENTS) == set(OOD_COMPONENTS) | set(ATTACK_COMPONENTS)
    assert set(calibration.combination_components) == set(COMBINED_COMPONENTS)
    assert set(calibration.combined) == {PRODUCTION_OOD_STATISTIC, ATTACK_STATISTIC}
    for name, reference in calibration.components.items():
        assert reference.side == STATISTICS[name].side and reference.statistic == name
        assert reference.summary["n"] == 1600
        expected = np.sort(np.concatenate([a[name], b[name]]))
        np.testing.assert_array_equal(reference.sorted_scores, expected)
    for name, reference in calibration.combination_components.items():
        assert reference.summary["n"] == 400
        np.testing.assert_array_equal(reference.sorted_scores, np.sort(a[name]))
    # each combined reference is T of part B, with the component p-values taken against part A
    p_b = {
        name: calibration.combination_components[name]
        .reference(tail_extrapolation=True)
        .p_value(b[name])
        for name in COMBINED_COMPONENTS
    }
    for name in (PRODUCTION_OOD_STATISTIC, ATTACK_STATISTIC):
        combination = COMBINATIONS[name]
        statistic = combination.combine({c: p_b[c] for c in combination.components})
        reference = calibration.combined[name]
        np.testing.assert_allclose(reference.sorted_scores, np.sort(statistic), rtol=1e-12)
        assert reference.side == "upper" and reference.summary["n"] == 1200
    assert calibration.split == {"part_a": 400}


def test_interpolation_is_stored_and_used(fitted, fresh_synthetic) -> None:
    """Every reference says how its p-values are read; "linear" reaches the lookups (p-values
    never below the step ones, and different somewhere), and a file written before the field
    existed is read as "step", the way it was calibrated."""
    calibration, a, b = fitted
    everything = [
        *calibration.components.values(),
        *calibration.combination_components.values(),
        *calibration.combined.values(),
    ]
    assert {reference.interpolation for reference in everything} == {DEFAULT_INTERPOLATION}
    linear = fit_calibration(a, b, 0.05, 0.05, interpolation="linear")
    _, statistics = fresh_synthetic
    for name, reference in linear.components.items():
        assert reference.interpolation == "linear"
        p_linear = reference.reference().p_value(statistics[name])
        p_step = calibration.components[name].reference().p_value(statistics[name])
        assert np.all(p_linear >= p_step - 1e-15) and np.any(p_linear > p_step), name
    legacy = calibration.combined[ATTACK_STATISTIC].model_dump()
    del legacy["interpolation"]
    assert ReferenceDistribution.model_validate(legacy).interpolation == "step"


def test_predictor_p_values_formula(fitted, fresh_synthetic, predictor) -> None:
    """Components against the whole split; the production p-value is T (component p-values
    against part A) looked up in part B's T reference, upper tail."""
    calibration, _, _ = fitted
    _, statistics = fresh_synthetic
    p = predictor.p_values(statistics)
    n = 1600
    for name, values in statistics.items():
        reference = np.asarray(calibration.components[name].sorted_scores)
        upper = (1 + (reference[None, :] >= values[:, None]).sum(1)) / (n + 1)
        lower = (1 + (reference[None, :] <= values[:, None]).sum(1)) / (n + 1)
        side = STATISTICS[name].side
        expected = {"upper": upper, "lower": lower}.get(side)
        if expected is None:
            expected = np.minimum(1, 2 * np.minimum(upper, lower))
        np.testing.assert_allclose(p[name], expected, rtol=1e-15)
    inner = {}
    for name in COMBINED_COMPONENTS:
        reference = np.asarray(calibration.combination_components[name].sorted_scores)
        upper = (1 + (reference[None, :] >= statistics[name][:, None]).sum(1)) / 401
        lower = (1 + (reference[None, :] <= statistics[name][:, None]).sum(1)) / 401
        # beyond the reference range: the exponential tail, written out by hand
        top, bottom = np.sort(reference)[::-1][:50], np.sort(reference)[:50]
        above, below = statistics[name] > reference.max(), statistics[name] < reference.min()
        upper = np.where(
            above, np.exp(-(statistics[name] - top[0]) / np.mean(top - top[-1])) / 401, upper
        )
        lower = np.where(
            below,
            np.exp(-(bottom[0] - statistics[name]) / np.mean(bottom[-1] - bottom)) / 401,
            lower,
        )
        two = np.minimum(1, 2 * np.minimum(upper, lower))
        inner[name] = two if STATISTICS[name].side == "two_sided" else upper
    ood_t = np.maximum(
        -np.log(inner["complexity_corrected"]) - np.log(inner["max_posterior"]),
        -np.log(inner["typicality"]),
    )
    attack_t = np.maximum.reduce(
        [-np.log(inner[name]) for name in ("class_distance", "logit_margin", "complexity_excess")]
    )
    for name, t in ((PRODUCTION_OOD_STATISTIC, ood_t), (ATTACK_STATISTIC, attack_t)):
        combined = np.asarray(calibration.combined[name].sorted_scores)
        expected = (1 + (combined[None, :] >= t[:, None]).sum(1)) / (combined.size + 1)
        np.testing.assert_allclose(p[name], expected, rtol=1e-15)


def test_combined_statistic_formula() -> None:
    p = {
        "complexity_corrected": np.asarray([1.0, 0.5, 0.1, 0.9]),
        "max_posterior": np.asarray([1.0, 0.25, 0.1, 0.9]),
        "typicality": np.asarray([1.0, 0.5, 0.5, 1e-6]),
    }
    # max(-log(pc * pm), -log(pt)), by hand
    expected = [0.0, np.log(8.0), np.log(100.0), np.log(1e6)]
    combine = COMBINATIONS[PRODUCTION_OOD_STATISTIC].combine
    np.testing.assert_allclose(combine(p), expected, rtol=1e-12)
    attack = {
        "class_distance": np.asarray([1.0, 0.5, 1e-3, 0.9]),
        "logit_margin": np.asarray([0.25, 1.0, 0.1, 0.9]),
        "complexity_excess": np.asarray([1.0, 1.0, 0.5, 1e-5]),
    }
    # max(-log p_distance, -log p_margin, -log p_complexity_excess), by hand
    expected = [np.log(4.0), np.log(2.0), np.log(1e3), np.log(1e5)]
    combine = COMBINATIONS[ATTACK_STATISTIC].combine
    np.testing.assert_allclose(combine(attack), expected, rtol=1e-12)


def test_fit_calibration_validates(fitted) -> None:
    _, a, b = fitted
    without = {name: values for name, values in b.items() if name != "class_distance"}
    with pytest.raises(ValueError, match="class_distance"):
        fit_calibration(a, without, 0.05, 0.05)
    with pytest.raises(ValueError):
        fit_calibration(a, b, ood_alpha=0.0, attack_alpha=0.05)
    with pytest.raises(ValueError):
        fit_calibration(a, b, ood_alpha=0.05, attack_alpha=1.0)


# ------------------------------------------------------------------------------ decisions


def _forced(calibration: Calibration, ood: bool, attack: bool, n: int = 999) -> Calibration:
    """A calibration whose references put every finite score in a chosen tail.

    Each combined reference all -1e9: p_upper(T) = 1 / (n + 1) for every T (else +1e9: p = 1).
    """

    def reference(name: str, reject: bool) -> ReferenceDistribution:
        return ReferenceDistribution.fit(name, "upper", np.full(n, -1e9 if reject else 1e9))

    combined = {
        PRODUCTION_OOD_STATISTIC: reference(PRODUCTION_OOD_STATISTIC, ood),
        ATTACK_STATISTIC: reference(ATTACK_STATISTIC, attack),
    }
    return calibration.model_copy(
        update={"ood_alpha": 0.01, "attack_alpha": 0.01, "combined": combined}
    )


@pytest.mark.parametrize(
    ("ood", "attack", "decision"),
    [
        (True, True, Decision.REJECTED_OOD),  # OoD wins: no attack verdict on OoD inputs
        (True, False, Decision.REJECTED_OOD),
        (False, True, Decision.FLAGGED_ATTACK),
        (False, False, Decision.ACCEPTED),
    ],
)
def test_decision_rule_branches(model, manifest, fitted, fresh_synthetic, ood, attack, decision):
    dataset, _ = fresh_synthetic
    forced = Predictor(model, manifest, _forced(fitted[0], ood, attack))
    results = forced.predict(_nchw(dataset)[:16])
    assert len(results) == 16
    for result in results:
        assert result.decision == decision
        assert result.out_of_distribution is ood
        assert result.attack_suspected is attack  # the attack test itself still runs
        assert result.ood_p_value == pytest.approx(1 / 1000 if ood else 1.0, abs=1e-15)
        assert result.attack_p_value == pytest.approx(1 / 1000 if attack else 1.0, abs=1e-15)
        assert set(ATTACK_COMPONENTS) <= set(result.component_p_values)
        assert result.ood_alpha == 0.01 and result.attack_alpha == 0.01
        assert result.ood_statistic == PRODUCTION_OOD_STATISTIC
        assert result.attack_statistic == ATTACK_STATISTIC


def test_p_value_equal_to_alpha_is_not_rejected(model, manifest, fitted, fresh_synthetic):
    """The rule rejects when p < alpha (strictly): n = 99 gives p = 1 / 100 = alpha."""
    dataset, _ = fresh_synthetic
    calibration = _forced(fitted[0], ood=True, attack=True, n=99)
    for result in Predictor(model, manifest, calibration).predict(_nchw(dataset)[:4]):
        assert result.ood_p_value == 0.01 and result.attack_p_value == 0.01
        assert result.decision == Decision.ACCEPTED
        assert not result.out_of_distribution and not result.attack_suspected


def test_decisions_follow_rule_on_a_mixed_batch(predictor, fresh_synthetic) -> None:
    """In-distribution and garbage images with the fitted calibration: every decision is the
    rule applied to the result's own p-values, and those p-values are predictor.p_values."""
    dataset, _ = fresh_synthetic
    rng = np.random.default_rng(0)
    images = np.concatenate(
        [
            dataset.images[:200],
            rng.integers(0, 256, (100, 8, 8, 1), dtype=np.uint8),
            np.zeros((20, 8, 8, 1), np.uint8),
            np.full((20, 8, 8, 1), 255, np.uint8),
        ]
    )
    results = predictor.predict(pixels_to_tensor(images).numpy(), batch_size=64)
    expected = predictor.p_values(dataset_statistics(predictor.model, images))
    seen = set()
    for i, result in enumerate(results):
        assert result.ood_p_value == expected[PRODUCTION_OOD_STATISTIC][i]
        assert result.attack_p_value == expected[ATTACK_STATISTIC][i]
        for name, value in result.component_p_values.items():
            assert value == expected[name][i]
        ood = result.ood_p_value < result.ood_alpha
        attack = result.attack_p_value < result.attack_alpha
        assert result.out_of_distribution is ood and result.attack_suspected is attack
        if ood:
            assert result.decision == Decision.REJECTED_OOD
        elif attack:
            assert result.decision == Decision.FLAGGED_ATTACK
        else:
            assert result.decision == Decision.ACCEPTED
        seen.add(result.decision)
    assert Decision.ACCEPTED in seen and Decision.REJECTED_OOD in seen


# ------------------------------------------------------------------------------ Predictor.predict


def test_score_columns_equal_predict_image_by_image(predictor, fresh_synthetic) -> None:
    """predict is score split per image: every field equals its column's row, bit for bit."""
    dataset, _ = fresh_synthetic
    rng = np.random.default_rng(1)
    images = np.concatenate(
        [dataset.images[:60], rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)]
    )
    pixels = pixels_to_tensor(images).numpy()
    table = predictor.score(pixels, batch_size=32)
    results = predictor.predict(pixels, batch_size=32)
    assert len(table) == len(results) == 80
    assert set(table.statistics) == set(predictor.calibration.components)
    assert set(table.p_values) == set(table.statistics) | set(predictor.calibration.combined)
    for i, result in enumerate(results):
        np.testing.assert_array_equal(table.probabilities[i], result.probabilities)
        np.testing.assert_array_equal(table.class_bits_per_dim[i], result.class_bits_per_dim)
        assert table.bits_per_dim[i] == result.bits_per_dim
        assert table.ood_p_value[i] == result.ood_p_value
        assert table.attack_p_value[i] == result.attack_p_value
        assert table.out_of_distribution[i] == result.out_of_distribution
        assert table.attack_suspected[i] == result.attack_suspected
        assert table.decisions[i] is result.decision
        assert table.predicted_index[i] == result.predicted_index
        assert {name: table.p_values[name][i] for name in table.statistics} == (
            result.component_p_values
        )
    assert set(table.decisions) >= {Decision.ACCEPTED, Decision.REJECTED_OOD}


def test_predict_outputs_match_the_model(predictor, fresh_synthetic) -> None:
    dataset, _ = fresh_synthetic
    pixels = _nchw(dataset)[:32]
    results = predictor.predict(pixels)
    with torch.no_grad():
        scores = predictor.model.score(pixels_to_unit(torch.from_numpy(pixels)))
    probabilities = scores.log_posterior.exp().double().numpy()
    bpd = scores.bits_per_dim().double().numpy()
    for i, result in enumerate(results):
        assert result.probabilities.shape == (4,)
        assert abs(result.probabilities.sum() - 1.0) < 1e-6
        # model.score's head runs in float32, the served one in float64
        np.testing.assert_allclose(result.probabilities, probabilities[i], rtol=1e-4, atol=1e-7)
        assert result.predicted_index == int(np.argmax(probabilities[i]))
        assert result.bits_per_dim == pytest.approx(bpd[i], rel=1e-5)
        assert result.class_bits_per_dim.shape == (4,)
        assert result.explanation is None
        assert all(0.0 < p <= 1.0 for p in result.component_p_values.values())


def test_predict_validates_input(predictor) -> None:
    good = np.zeros((2, 1, 8, 8), np.uint8)
    bad_inputs = [
        good.astype(np.float32),
        good.astype(np.int64),
        np.zeros((2, 8, 8, 1), np.uint8),  # channels last
        np.zeros((2, 1, 8, 9), np.uint8),
        np.zeros((2, 3, 8, 8), np.uint8),
        np.zeros((1, 8, 8), np.uint8),
    ]
    for pixels in bad_inputs:
        with pytest.raises(ValueError, match="expected uint8 images"):
            predictor.predict(pixels)
    with pytest.raises(ValueError, match="explain flags"):
        predictor.predict(good, explain=[True])
    assert len(predictor.predict(good)) == 2


@pytest.mark.parametrize("num_classes", [4, 5])  # 4 < decision_space's default top=5
def test_explanations(num_classes, make_images) -> None:
    net = _tiny_model(num_classes)
    dataset = _dataset(make_images, 40 * num_classes, seed=20)
    statistics = dataset_statistics(net, dataset.images)
    half = {name: values[:100] for name, values in statistics.items()}
    rest = {name: values[100:] for name, values in statistics.items()}
    predictor = Predictor(net, _manifest(net), fit_calibration(half, rest, 0.05, 0.05))
    pixels = _nchw(dataset)[:5]
    results = predictor.predict(pixels, explain=True)
    _, height, width = predictor.manifest.config.latent_shape
    for result in results:
        maps = result.explanation["posterior_heatmaps"]
        assert maps.shape == (num_classes, height, width) and maps.dtype == np.float64
        np.testing.assert_allclose(
            maps.sum(axis=(1, 2)), np.log(result.probabilities), rtol=0, atol=1e-4
        )
        space = result.explanation["decision_space"]
        assert space["classes"][0] == result.predicted_index
    chosen = predictor.predict(pixels, explain=[False, True, False, False, True])
    assert [r.explanation is not None for r in chosen] == [False, True, False, False, True]
    np.testing.assert_array_equal(
        chosen[1].explanation["posterior_heatmaps"], results[1].explanation["posterior_heatmaps"]
    )
    # explanations do not change the verdicts
    for a, b in zip(chosen, results, strict=True):
        assert a.decision == b.decision and a.ood_p_value == b.ood_p_value


# ------------------------------------------------------------------------------ persistence


def test_calibration_json_round_trip(tmp_path, model, manifest, fitted, fresh_synthetic):
    calibration = fitted[0]
    assert load_calibration(tmp_path) is None
    save_calibration(tmp_path, calibration)
    assert (tmp_path / CALIBRATION_FILE).is_file()
    loaded = load_calibration(tmp_path)
    assert loaded == calibration
    _, statistics = fresh_synthetic
    before = Predictor(model, manifest, calibration).p_values(statistics)
    after = Predictor(model, manifest, loaded).p_values(statistics)
    assert (
        set(before) == set(after) == set(statistics) | {PRODUCTION_OOD_STATISTIC, ATTACK_STATISTIC}
    )
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


def test_from_artifact_needs_calibration(tmp_path, model, manifest, fitted, fresh_synthetic):
    save_model(tmp_path, model, manifest)
    with pytest.raises(ValueError, match="not calibrated"):
        Predictor.from_artifact(tmp_path)
    save_calibration(tmp_path, fitted[0])
    loaded = Predictor.from_artifact(tmp_path)
    assert loaded.class_names == ("a", "b", "c", "d")
    assert loaded.input_shape == (1, 8, 8)
    dataset, _ = fresh_synthetic
    pixels = _nchw(dataset)[:20]
    original = Predictor(model, manifest, fitted[0]).predict(pixels)
    for a, b in zip(loaded.predict(pixels), original, strict=True):
        np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=0, atol=1e-12)
        assert a.ood_p_value == b.ood_p_value and a.attack_p_value == b.attack_p_value
        assert a.decision == b.decision


def test_old_calibration_format_is_refused_with_a_fix(tmp_path, fitted) -> None:
    save_calibration(tmp_path, fitted[0])
    path = tmp_path / CALIBRATION_FILE
    data = json.loads(path.read_text())
    data["format_version"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="run `trustgc calibrate"):
        load_calibration(tmp_path)


def test_complexity_excess_is_the_other_tail_and_encodes_png_once(monkeypatch, fresh_synthetic):
    import trustgc.trust.statistics as statistics_module

    dataset, _ = fresh_synthetic
    pixels = _nchw(dataset)[:30]
    rng = np.random.default_rng(0)
    outputs = ModelOutputs(
        np.log(np.full((30, 4), 0.25)), rng.normal(-100, 5, 30), None, None, dim=64
    )
    calls = []
    original = statistics_module.png_code_length_bits
    monkeypatch.setattr(
        statistics_module, "png_code_length_bits", lambda x: calls.append(1) or original(x)
    )
    both = compute_statistics(outputs, pixels, ["complexity_excess", "complexity_corrected"])
    assert len(calls) == 1
    np.testing.assert_array_equal(both["complexity_excess"], -both["complexity_corrected"])
    assert STATISTICS["complexity_excess"].side == "upper"  # the lower tail of the other
    with pytest.raises(ValueError, match="unknown statistics"):
        compute_statistics(outputs, pixels, ["complexity_deficit"])
