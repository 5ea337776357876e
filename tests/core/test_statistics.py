"""The statistic registry (trustgc.trust.statistics) and what derives from it.

Ground truth: each statistic's torch form (what attacks differentiate) equals its array form
(what the service computes) on real model outputs; a calibration fitted for other combinations
is refused; a statistic registered in the registry alone reaches calibration, p-values and the
served components.  Only the core is imported.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trustgc.artifact import ModelManifest, build_model
from trustgc.config import ModelConfig
from trustgc.ibinn import IBINN
from trustgc.inference import ModelOutputs, latent_scores, model_outputs
from trustgc.preprocess import pixels_to_unit
from trustgc.trust.calibration import (
    Calibration,
    check_against_registry,
    fit_calibration,
    load_calibration,
    save_calibration,
)
from trustgc.trust.predictor import Predictor
from trustgc.trust.statistics import (
    ATTACK_STATISTIC,
    COMBINATIONS,
    PAPER_STATISTIC,
    PRODUCTION_OOD_STATISTIC,
    STATISTICS,
    Combination,
    Statistic,
    computable,
    compute_statistics,
    differentiable,
    neighbour_correlation,
    surrogate_of,
    torch_form_of,
)
from trustgc.trust.table import Decision

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(make_flow) -> IBINN:
    return make_flow(seed=0, num_classes=4)


@pytest.fixture(scope="module")
def background(make_flow) -> IBINN:
    """A second tiny flow standing in for the artifact's background model."""
    return make_flow(seed=1, num_classes=2)


@pytest.fixture(scope="module")
def manifest(model) -> ModelManifest:
    return ModelManifest(name="tiny", config=model.config, class_names=("a", "b", "c", "d"))


@pytest.fixture(scope="module")
def pixels(make_images) -> np.ndarray:
    """Blobs and, in one eighth, uniform noise: real model outputs of varied inputs."""
    return make_images(1600, seed=0, noise_share=0.125)


@pytest.fixture(scope="module")
def statistics(model, pixels) -> dict[str, np.ndarray]:
    outputs = model_outputs(model, torch.from_numpy(pixels))
    return compute_statistics(outputs, pixels, computable(has_background=False))


def _fit(statistics: dict[str, np.ndarray]) -> Calibration:
    a = {name: values[:400] for name, values in statistics.items()}
    b = {name: values[400:] for name, values in statistics.items()}
    return fit_calibration(a, b, ood_alpha=0.05, attack_alpha=0.05)


@pytest.fixture(scope="module")
def calibration(statistics) -> Calibration:
    return _fit(statistics)


# ------------------------------------------------------------------------------ the forms


@pytest.mark.parametrize("name", differentiable())
def test_torch_form_equals_array_form_on_model_outputs(model, background, pixels, name) -> None:
    """On the same float64 scores of real model outputs the two forms agree to rounding."""
    subset = pixels[:300]
    x = pixels_to_unit(torch.from_numpy(subset))
    with torch.no_grad():
        scores = latent_scores(model, x, background)
    outputs = model_outputs(model, torch.from_numpy(subset), background=background)
    served = compute_statistics(outputs, subset, [name])
    value = torch_form_of(name)(scores)
    assert value.shape == (300,) and value.dtype == torch.float64
    np.testing.assert_allclose(value.numpy(), served[name], rtol=1e-12, atol=1e-12)
    assert np.std(served[name]) > 0  # a constant would make the comparison empty


@pytest.mark.parametrize("name", differentiable())
def test_torch_forms_carry_gradients_to_the_pixels(model, background, pixels, name) -> None:
    x = pixels_to_unit(torch.from_numpy(pixels[:16])).requires_grad_(True)
    value = torch_form_of(name)(latent_scores(model, x, background))
    (gradient,) = torch.autograd.grad(value.sum(), x)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


def test_max_posterior_torch_form_keeps_the_digits_of_confident_posteriors() -> None:
    """Both forms on hand-made posteriors, confident (q(top) = 1 - 1e-13) and not."""
    logits = np.asarray([[0.0, -30.0, -35.0], [-40.0, 0.0, -31.0], [0.0, -0.5, -3.0]])
    log_posterior = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    outputs = ModelOutputs(log_posterior, np.zeros(3), None, None, dim=4)
    array = compute_statistics(outputs, None, ["max_posterior"])["max_posterior"]
    form = torch_form_of("max_posterior")(
        SimpleNamespace(log_posterior=torch.from_numpy(log_posterior))
    )
    np.testing.assert_allclose(form.numpy(), array, rtol=1e-14, atol=0)
    np.testing.assert_allclose(form[0].item(), np.exp(-30.0) + np.exp(-35.0), rtol=1e-9)


def test_every_statistic_can_be_attacked_or_names_its_surrogate() -> None:
    """No statistic is silently out of an attacker's reach: a torch form or a surrogate name;
    a negation inherits its source's (complexity_excess: PNG length, like its source)."""
    for name in STATISTICS:
        assert (torch_form_of(name) is None) != (surrogate_of(name) is None), name
    assert surrogate_of("complexity_excess") == surrogate_of("complexity_corrected") is not None
    assert STATISTICS["complexity_excess"].negation_of == "complexity_corrected"


def test_declarations_are_validated() -> None:
    array = STATISTICS["typicality"].array
    with pytest.raises(ValueError, match="exactly one of array, negation_of"):
        Statistic("both", "upper", "x", array=array, negation_of="typicality")
    with pytest.raises(ValueError, match="exactly one of array, negation_of"):
        Statistic("neither", "upper", "x")
    with pytest.raises(ValueError, match="not both"):
        Statistic(
            "x", "upper", "x", array=array, torch_form=torch_form_of("typicality"), surrogate="s"
        )
    with pytest.raises(ValueError, match="unknown side"):
        Statistic("x", "left", "x", array=array)


def test_served_roles_resolve_in_the_registry() -> None:
    assert PAPER_STATISTIC in STATISTICS
    for role in (PRODUCTION_OOD_STATISTIC, ATTACK_STATISTIC):
        assert set(COMBINATIONS[role].components) <= set(STATISTICS)


# ------------------------------------------------------------------------------ calibration


def test_calibration_records_what_it_was_fitted_for(calibration) -> None:
    assert set(calibration.components) == set(computable(has_background=False))
    assert calibration.ood_components == COMBINATIONS[PRODUCTION_OOD_STATISTIC].components
    assert calibration.attack_components == COMBINATIONS[ATTACK_STATISTIC].components
    for name, reference in calibration.components.items():
        assert reference.side == STATISTICS[name].side
    check_against_registry(calibration)  # its own fit passes


@pytest.mark.parametrize(
    "update",
    [
        {"attack_components": ("class_distance", "logit_margin")},  # a combination's components
        {"ood_components": ("typicality", "max_posterior", "complexity_corrected", "logit_margin")},
        {"attack_statistic": "combined_unknown"},  # a combination the code does not have
    ],
)
def test_a_calibration_fitted_for_other_combinations_is_refused(
    tmp_path, model, manifest, calibration, update
) -> None:
    other = calibration.model_copy(update=update)
    with pytest.raises(ValueError, match="does not match this code"):
        check_against_registry(other)
    with pytest.raises(ValueError, match="run `trustgc calibrate --model"):
        Predictor(model, manifest, other)
    save_calibration(tmp_path, other)
    with pytest.raises(ValueError, match=f"trustgc calibrate --model {tmp_path}"):
        load_calibration(tmp_path)


def test_a_statistic_fitted_on_another_side_is_refused(calibration) -> None:
    components = dict(calibration.components)
    components["logit_margin"] = components["logit_margin"].model_copy(update={"side": "lower"})
    with pytest.raises(ValueError, match="logit_margin was fitted lower"):
        check_against_registry(calibration.model_copy(update={"components": components}))


# ------------------------------------------------------------------------------ one new statistic


def _brightness(outputs: ModelOutputs, pixels: np.ndarray | None) -> np.ndarray:
    return pixels.reshape(len(pixels), -1).mean(axis=1) / 255.0


def test_a_new_statistic_needs_only_its_registry_entry(
    monkeypatch, make_images, model, manifest, pixels, calibration
) -> None:
    """Register a statistic (and add it to the attack combination) in the registry alone:
    calibration fits it, the predictor serves its p-value, and the combination uses it.
    A calibration fitted before the change is refused."""
    name = "brightness"
    monkeypatch.setitem(
        STATISTICS, name, Statistic(name, "two_sided", "mean pixel value", array=_brightness)
    )
    old = COMBINATIONS[ATTACK_STATISTIC]
    monkeypatch.setitem(
        COMBINATIONS,
        ATTACK_STATISTIC,
        Combination(ATTACK_STATISTIC, (*old.components, name), old.combine, old.description),
    )
    with pytest.raises(ValueError, match="does not match this code"):
        Predictor(model, manifest, calibration)  # fitted without it

    outputs = model_outputs(model, torch.from_numpy(pixels))
    statistics = compute_statistics(outputs, pixels, computable(has_background=False))
    refitted = _fit(statistics)
    assert refitted.components[name].side == "two_sided"
    assert name in refitted.combination_components and name in refitted.attack_components
    predictor = Predictor(model, manifest, refitted)

    fresh = make_images(200, seed=1, noise_share=0.125)
    table = predictor.score(fresh)
    brightness = _brightness(None, fresh)
    np.testing.assert_array_equal(table.statistics[name], brightness)
    np.testing.assert_array_equal(
        table.p_values[name], refitted.components[name].reference().p_value(brightness)
    )
    inner = {
        c: refitted.combination_components[c]
        .reference(tail_extrapolation=True)
        .p_value(table.statistics[c])
        for c in refitted.attack_components
    }
    expected = refitted.combined[ATTACK_STATISTIC].reference().p_value(old.combine(inner))
    np.testing.assert_array_equal(table.attack_p_value, expected)
    result = predictor.predict(fresh[:3])[0]
    assert result.component_p_values[name] == table.p_values[name][0]


# ------------------------------------------------------------------------------ classifier


def test_a_classifier_scores_with_neutral_columns(make_images) -> None:
    config = ModelConfig(
        name="tiny_classifier",
        kind="classifier",
        input={"height": 8, "width": 8, "channels": 1, "mean": [0.5], "std": [0.25]},
        num_classes=3,
        stages=[{"blocks": 1, "width": 8, "downsample": "haar"}],
    )
    torch.manual_seed(0)
    network = build_model(config).eval()
    manifest = ModelManifest(name=config.name, config=config, class_names=("a", "b", "c"))
    predictor = Predictor(network, manifest, None)
    pixels = make_images(6, seed=2, noise_share=0.125)
    table = predictor.score(pixels)
    with torch.inference_mode():
        expected = torch.softmax(network(pixels_to_unit(torch.from_numpy(pixels))), dim=1)
    np.testing.assert_allclose(table.probabilities, expected.double().numpy(), rtol=1e-5)
    assert table.class_bits_per_dim.shape == (6, 0) and table.log_likelihood is None
    np.testing.assert_array_equal(table.bits_per_dim, np.zeros(6))
    assert table.statistics == {} and table.p_values == {}
    np.testing.assert_array_equal(table.ood_p_value, np.ones(6))
    np.testing.assert_array_equal(table.attack_p_value, np.ones(6))
    assert table.ood_statistic == table.attack_statistic == "none"
    assert not table.out_of_distribution.any() and not table.attack_suspected.any()
    assert all(decision is Decision.ACCEPTED for decision in table.decisions)
    for i, result in enumerate(predictor.predict(pixels)):
        np.testing.assert_array_equal(result.probabilities, table.probabilities[i])
        assert result.decision is table.decisions[i]


def _moran_by_loops(image: np.ndarray) -> float:
    """Moran's I with rook neighbours, pair by pair (the ground truth for the vector form)."""
    numerator = denominator = 0.0
    channels, height, width = image.shape
    for c in range(channels):
        plane = image[c].astype(np.float64)
        mean, variance = plane.mean(), plane.var()
        pairs = 0
        for i in range(height):
            for j in range(width):
                for di, dj in ((0, 1), (1, 0)):
                    if i + di < height and j + dj < width:
                        numerator += (plane[i, j] - mean) * (plane[i + di, j + dj] - mean)
                        pairs += 1
        denominator += pairs * variance
    return numerator / denominator if denominator > 0 else 1.0


def test_neighbour_correlation_against_hand_and_loop_computation() -> None:
    checkerboard = np.array([[[[0, 255], [255, 0]]]], np.uint8)  # every pair anti-correlated
    assert neighbour_correlation(checkerboard) == pytest.approx([-1.0])
    constant = np.full((1, 3, 5, 5), 9, np.uint8)
    assert neighbour_correlation(constant) == pytest.approx([1.0])
    ramp = np.tile(np.arange(0, 252, 9, dtype=np.uint8), (28, 1))[None, None]
    assert neighbour_correlation(ramp)[0] > 0.9
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(4, 3, 6, 7)).astype(np.uint8)
    images[1, 0] = 17  # one constant channel: it adds nothing to either sum
    expected = [_moran_by_loops(image) for image in images]
    np.testing.assert_allclose(neighbour_correlation(images), expected, rtol=1e-12)
    noise = rng.integers(0, 256, size=(200, 1, 28, 28)).astype(np.uint8)
    assert abs(neighbour_correlation(noise).mean()) < 0.01  # i.i.d. pixels: none
