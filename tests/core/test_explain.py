"""Exactness of the explanation maps (trustgc.explain) and smoke tests of trustgc.plots.

The heatmaps and the salience map must sum over positions to the model's own log q(y|x) and
log q(x) as computed by ``trustgc.scoring.score_latents``; the class-similarity numbers are
checked against the reference values and a Monte-Carlo estimate.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from trustgc.config import load_model_config
from trustgc.explain import (
    class_distances,
    class_similarity,
    decision_space,
    energy_maps,
    expected_pairwise_posterior,
    posterior_heatmaps,
    salience_map,
)
from trustgc.head import GaussianMixtureHead
from trustgc.ibinn import IBINN
from trustgc.layers import DCTPooling
from trustgc.plots import plot_class_similarity, plot_decision_space, plot_heatmaps
from trustgc.scoring import score_latents

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def _randomised_model(flat_blocks: int | None, dtype: torch.dtype) -> IBINN:
    overrides = {} if flat_blocks is None else {"flat_blocks": flat_blocks}
    config = load_model_config("tiny", **overrides)
    torch.manual_seed(0)
    model = IBINN(config).to(dtype).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def _latents(model: IBINN, dtype: torch.dtype):
    spec = model.config.input
    images = torch.rand(6, spec.channels, spec.height, spec.width, dtype=dtype)
    with torch.no_grad():
        z, logdet = model(images)
    return z, logdet, score_latents(z, logdet, model.head)


def _hand_head(means: np.ndarray) -> GaussianMixtureHead:
    head = GaussianMixtureHead(means.shape[0], means.shape[1], init_distance=1.0).double()
    with torch.no_grad():
        head.full_means.copy_(torch.as_tensor(means))
    return head


# ------------------------------------------------------------------------------ heatmaps


@pytest.mark.parametrize("flat_blocks", [None, 0], ids=["tiny", "no-flat"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("contrast", [None, 0.5, 5.0])
def test_heatmaps_sum_to_log_posterior(flat_blocks, dtype, contrast) -> None:
    model = _randomised_model(flat_blocks, dtype)
    z, _, scores = _latents(model, dtype)
    heatmaps = posterior_heatmaps(z, model.head, model.config.latent_shape, contrast)
    _, height, width = model.config.latent_shape
    assert heatmaps.shape == (z.shape[0], model.config.num_classes, height, width)
    assert heatmaps.dtype == dtype
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(heatmaps.sum(dim=(2, 3)), scores.log_posterior, atol=tol, rtol=tol)


def test_contrast_changes_maps_and_large_contrast_is_uniform() -> None:
    model = _randomised_model(0, torch.float64)
    z, _, _ = _latents(model, torch.float64)
    shape = model.config.latent_shape
    uniform = posterior_heatmaps(z, model.head, shape)
    sharp = posterior_heatmaps(z, model.head, shape, contrast=0.1)
    assert not torch.allclose(uniform, sharp)
    torch.testing.assert_close(posterior_heatmaps(z, model.head, shape, 1e12), uniform)


def test_energy_maps_are_the_pre_dct_feature_map() -> None:
    """With zero means, w^(y) = DCT^-1(z) is the map DCTPooling received (non-square layout)."""
    channels, height, width = 3, 4, 6
    features = torch.randn(2, channels, height, width, dtype=torch.float64)
    z, _ = DCTPooling(channels, height, width).double()(features)
    head = _hand_head(np.zeros((2, z.shape[1])))
    maps = energy_maps(z, head, (channels, height, width))
    expected = 0.5 * features.pow(2).sum(dim=1)
    for y in range(2):
        torch.testing.assert_close(maps[:, y], expected, atol=1e-12, rtol=0)


def test_energy_maps_match_model_feature_map_without_flat_blocks() -> None:
    model = _randomised_model(0, torch.float64)
    images = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    layers = list(model.flow)
    assert isinstance(layers[-1], DCTPooling)
    with torch.no_grad():
        features = images
        for layer in layers[:-1]:
            features, _ = layer(features)
        z, _ = model(images)
        maps = energy_maps(z, model.head, model.config.latent_shape)
        mean_maps = torch.einsum(
            "uh,kuvc,vw->kchw",
            layers[-1].dct_h,
            model.head.means().double().reshape(-1, 2, 2, 16),
            layers[-1].dct_w,
        )
    expected = 0.5 * (features.unsqueeze(1) - mean_maps.unsqueeze(0)).pow(2).sum(dim=2)
    torch.testing.assert_close(maps, expected, atol=1e-10, rtol=0)


# ------------------------------------------------------------------------------ salience


@pytest.mark.parametrize("flat_blocks", [None, 0], ids=["tiny", "no-flat"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_salience_sums_to_log_likelihood(flat_blocks, dtype) -> None:
    model = _randomised_model(flat_blocks, dtype)
    z, logdet, scores = _latents(model, dtype)
    salience = salience_map(z, logdet, model.head, model.config.latent_shape)
    assert salience.shape == (z.shape[0], 2, 2)
    assert salience.dtype == dtype
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(salience.sum(dim=(1, 2)), scores.log_likelihood, atol=tol, rtol=tol)


# ------------------------------------------------------------------------------ similarity


def test_expected_pairwise_posterior_reference_values() -> None:
    values = expected_pairwise_posterior(np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(np.round(values, 3), [0.398, 0.225, 0.099, 0.034])
    assert float(expected_pairwise_posterior(0.0)) == pytest.approx(0.5, abs=1e-12)
    assert expected_pairwise_posterior(2.0).shape == ()


@pytest.mark.parametrize("distance", [1.0, 2.0, 3.0, 4.0])
def test_expected_pairwise_posterior_matches_monte_carlo(distance: float) -> None:
    """Two equal-weight unit Gaussians in 4 dims: the mean posterior of the *other* class."""
    rng = np.random.default_rng(int(distance))
    count, dims = 1_000_000, 4
    means = np.zeros((2, dims))
    means[1, 0] = distance
    labels = rng.integers(0, 2, size=count)
    samples = means[labels] + rng.standard_normal((count, dims))
    squared = ((samples[:, None, :] - means[None]) ** 2).sum(axis=2)
    logits = -0.5 * squared
    posterior = np.exp(logits - np.logaddexp(logits[:, :1], logits[:, 1:]))
    other = posterior[np.arange(count), 1 - labels]
    assert float(expected_pairwise_posterior(distance)) == pytest.approx(other.mean(), abs=0.003)


def test_class_similarity_from_hand_set_means() -> None:
    means = np.array(
        [[0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 2, 0, 0, 0], [0, 0, 3, 4, 0.0]], dtype=np.float64
    )
    head = _hand_head(means)
    truth = np.linalg.norm(means[:, None] - means[None], axis=2)
    np.testing.assert_allclose(class_distances(head), truth, atol=1e-12)
    similarity = class_similarity(head)
    assert similarity.shape == (4, 4)
    assert np.isnan(np.diag(similarity)).all()
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose(similarity[off], expected_pairwise_posterior(truth[off]))
    assert similarity[0, 1] == pytest.approx(0.398, abs=5e-4)  # distance 1
    assert similarity[0, 3] == pytest.approx(expected_pairwise_posterior(5.0))


def test_class_distances_low_rank_head() -> None:
    torch.manual_seed(1)
    head = GaussianMixtureHead(3, 10, init_distance=2.0, full_dims=4, rank=2).double()
    with torch.no_grad():
        head.low_rank_coefficients.normal_()
    means = head.means().detach().numpy()
    truth = np.linalg.norm(means[:, None] - means[None], axis=2)
    np.testing.assert_allclose(class_distances(head), truth, atol=1e-10)


# ------------------------------------------------------------------------------ decision space


def _decision_head() -> tuple[GaussianMixtureHead, np.ndarray]:
    rng = np.random.default_rng(3)
    means = 3.0 * rng.standard_normal((5, 6))
    return _hand_head(means), means


def test_decision_space_at_a_class_mean() -> None:
    head, means = _decision_head()
    z = torch.as_tensor(means[2:3])
    (item,) = decision_space(z, head, top=5)
    assert item["classes"][0] == 2
    assert sorted(item["classes"].tolist()) == [0, 1, 2, 3, 4]
    assert np.all(np.diff(item["posterior"]) <= 0)
    np.testing.assert_allclose(item["z_xy"], item["means_xy"][0], atol=1e-12)
    np.testing.assert_allclose(item["means_xy"][0], [0.0, 0.0], atol=1e-12)
    assert item["residual_distance"] == pytest.approx(0.0, abs=1e-12)
    true_top = means[item["classes"]]
    plotted = np.linalg.norm(item["means_xy"][1] - item["means_xy"][0])
    assert plotted == pytest.approx(np.linalg.norm(true_top[1] - true_top[0]), abs=1e-12)
    assert item["means_xy"][1, 1] == pytest.approx(0.0, abs=1e-12)
    # Every mean keeps its true distance from mu_top1 (all lie in the span).
    np.testing.assert_allclose(
        np.linalg.norm(item["means_xy"], axis=1),
        np.linalg.norm(true_top - true_top[0], axis=1),
        atol=1e-12,
    )
    assert (item["means_xy"][:, 1] >= 0).all()
    assert round(item["radius_vertical"], 2) == 2.50
    assert item["radius_horizontal"] == pytest.approx(1.645, abs=5e-4)


def test_decision_space_general_point_keeps_distances() -> None:
    head, means = _decision_head()
    z = torch.as_tensor(means[0] + np.random.default_rng(4).standard_normal((3, 6)))
    for row, item in enumerate(decision_space(z, head, top=4)):
        origin = means[item["classes"][0]]
        x, y = item["z_xy"]
        total = x**2 + y**2 + item["residual_distance"] ** 2
        assert total == pytest.approx(float(np.sum((z[row].numpy() - origin) ** 2)), rel=1e-10)
        assert y >= 0 and item["residual_distance"] >= 0
        assert item["radius_vertical"] == pytest.approx(2.146, abs=1e-3)  # chi(2) 90% quantile
    (item,) = decision_space(z[:1], head, top=2)
    assert item["radius_vertical"] == 0.0


# ------------------------------------------------------------------------------ validation


def test_shape_errors_name_expected_and_actual() -> None:
    model = _randomised_model(None, torch.float32)
    z, logdet, _ = _latents(model, torch.float32)
    shape = model.config.latent_shape
    with pytest.raises(ValueError, match=r"\(B, 64\).*\(6, 63\)"):
        posterior_heatmaps(z[:, :63], model.head, shape)
    with pytest.raises(ValueError, match=r"C\*H\*W = 64.*\(16, 2, 3\)"):
        posterior_heatmaps(z, model.head, (16, 2, 3))
    with pytest.raises(ValueError, match=r"contrast"):
        posterior_heatmaps(z, model.head, shape, contrast=0.0)
    with pytest.raises(ValueError, match=r"\(6,\).*\(5,\)"):
        salience_map(z, logdet[:5], model.head, shape)
    with pytest.raises(ValueError, match=r"top <= 4, got 5"):
        decision_space(z, model.head, top=5)
    with pytest.raises(ValueError, match=r"distances >= 0"):
        expected_pairwise_posterior(-1.0)


# ------------------------------------------------------------------------------ plots


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > len(PNG_SIGNATURE) and data.startswith(PNG_SIGNATURE)


def test_plots_write_png_files(tmp_path) -> None:
    model = _randomised_model(None, torch.float32)
    z, _, _ = _latents(model, torch.float32)
    names = [f"class {k}" for k in range(model.config.num_classes)]
    heatmaps = posterior_heatmaps(z, model.head, model.config.latent_shape)[0].numpy()
    image = np.random.default_rng(0).random((8, 8))

    written = plot_heatmaps(image, heatmaps, names, tmp_path / "heat.png", top=3)
    assert written == tmp_path / "heat.png" and _is_png(written)
    rgb = plot_heatmaps(
        np.random.default_rng(1).random((8, 8, 3)), heatmaps, names, tmp_path / "rgb.png"
    )
    assert _is_png(rgb)

    item = decision_space(z, model.head, top=4)[0]
    assert _is_png(plot_decision_space(item, names, tmp_path / "space.png"))
    assert _is_png(
        plot_class_similarity(
            class_similarity(model.head), names, tmp_path / "sub" / "similarity.png"
        )
    )


def test_plots_module_import_has_no_side_effects() -> None:
    code = (
        "import sys, trustgc.plots; "
        "assert 'matplotlib' not in sys.modules, sorted(m for m in sys.modules if 'matpl' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plot_heatmaps_rejects_bad_names(tmp_path) -> None:
    with pytest.raises(ValueError, match="expected 4 class names, got 2"):
        plot_heatmaps(np.zeros((8, 8)), np.zeros((4, 2, 2)), ["a", "b"], tmp_path / "x.png")
