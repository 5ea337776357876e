"""Background-flow training and the selection report, on a tiny flow and synthetic photos.

Ground truth: the trainer runs its time budget on the device and thread count asked for (both
overridable from the command line and recorded in the recipe), never touches the held-out
selection photos, and its artifact loads back as a two-component flow that lowers the
training loss; the selection report's density-fit column is the mean background NLL per set.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import training.background as background_module
from training.background import selection_split, train_background
from training.background_select import (
    SIDES,
    copula_density_candidate,
    evaluate_candidates,
    iid_noise,
    mix_with_uniform,
    normal_scores,
)
from trustgc.artifact import load_model
from trustgc.config import load_config_file
from trustgc.trust.pvalues import EmpiricalReference

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 8, 8)


@pytest.fixture
def tiny_config(tmp_path):
    """The tiny model with a background section (a config file, as --config accepts)."""
    raw = {
        "model": {**load_config_file("tiny")["model"], "num_classes": 2},
        "background": {
            "minutes": 0.02,
            "batch_size": 16,
            "lr": 0.002,
            "selection_size": 10,
            "noise_share": 0.25,
            "dequantization_noise": 0.01,
            "seed": 0,
            "threads": 2,
        },
    }
    path = tmp_path / "tiny_background.json"
    path.write_text(json.dumps(raw))
    return path


def test_training_records_overrides_and_keeps_the_hold_out(tiny_config, tmp_path, monkeypatch):
    photos = np.random.default_rng(0).integers(0, 256, (60, *SHAPE), dtype=np.uint8)
    _, held_out = selection_split(len(photos), 10, 0)
    photos[held_out] = 0  # a held-out photo in a batch would show as an all-black image
    seen = []
    real_dequantize = background_module.dequantize

    def spy(pixels, noise, generator):
        seen.append(pixels.clone())
        return real_dequantize(pixels, noise, generator)

    monkeypatch.setattr(background_module, "served_cifar10", lambda root, split, shape: photos)
    monkeypatch.setattr(background_module, "dequantize", spy)
    out = tmp_path / "bg"
    recipe = train_background(str(tiny_config), out, tmp_path, minutes=0.01, threads=1)
    assert recipe["background"]["threads"] == 1 and recipe["background"]["minutes"] == 0.01
    assert recipe["device"] == "cpu"
    assert recipe["steps"] == len(seen) > 0
    assert recipe["train_images"] == 50
    photo_count = 16 - 4
    for batch in seen:
        assert batch[:photo_count].flatten(1).amax(dim=1).min() > 0  # no held-out photo
    model, manifest = load_model(out)
    assert manifest.class_names == ("photo", "noise")
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_selection_report_has_the_background_fit():
    rng = np.random.default_rng(0)
    names = (
        "complexity_corrected",
        "typicality",
        "max_posterior",
        "background_ratio",
        "background_nll",
    )

    def fake(shift: float, n: int) -> dict[str, np.ndarray]:
        values = {name: rng.normal(size=n) for name in SIDES}
        values.update({name: rng.normal(size=n) for name in names})
        values["background_ratio"] = values["background_ratio"] - shift
        values["background_nll"] = np.full(n, 1.5 + shift)
        return values

    stats = {
        "calibration_a": fake(0.0, 400),
        "calibration_b": fake(0.0, 400),
        "cifar10_train_held_out": fake(4.0, 100),
        "smooth_noise": fake(0.0, 100),
    }
    report = evaluate_candidates(stats)
    assert report["background_nll_per_dim"] == {
        "cifar10_train_held_out": pytest.approx(5.5),
        "smooth_noise": pytest.approx(1.5),
    }
    ratio = report["candidates"]["ratio_alone"]
    assert ratio["cifar10_train_held_out"]["auc_percent"] > 99.0
    assert 35.0 < ratio["smooth_noise"]["auc_percent"] < 65.0


def test_iid_noise_is_seeded_uint8_and_spatially_uncorrelated():
    images = iid_noise(300, (1, 28, 28), np.random.default_rng(5))
    again = iid_noise(300, (1, 28, 28), np.random.default_rng(5))
    assert images.dtype == np.uint8 and images.shape == (300, 1, 28, 28)
    np.testing.assert_array_equal(images, again)
    # i.i.d. pixels: neighbours are uncorrelated (the smooth-noise family's are not)
    centred = images.astype(float) - images.mean(axis=(2, 3), keepdims=True)
    left, right = centred[..., :-1].ravel(), centred[..., 1:].ravel()
    assert abs(np.corrcoef(left, right)[0, 1]) < 0.02
    # three kinds: two-level salt and pepper, 3-8 grey levels, and many-valued Laplace noise
    levels = np.array([np.unique(image).size for image in images])
    assert (levels == 2).any() and ((levels >= 3) & (levels <= 8)).any() and (levels > 30).any()


def test_uniform_mixture_against_hand_computation():
    log_q = np.array([-500.0, 0.0, 3.0])
    np.testing.assert_array_equal(mix_with_uniform(log_q, 0.0), log_q)
    mixed = mix_with_uniform(log_q, 0.25)
    expected = [np.log(0.25), np.log(0.75 + 0.25), np.log(0.75 * np.exp(3.0) + 0.25)]
    np.testing.assert_allclose(mixed, expected, rtol=1e-12, atol=1e-15)


def test_normal_scores_recover_the_quantiles_of_a_normal_reference():
    reference = EmpiricalReference(
        np.sort(np.random.default_rng(1).normal(size=20_000)), "upper", True
    )
    z = normal_scores(reference, np.array([-2.0, -1.0, 0.0, 1.0, 2.0]))
    np.testing.assert_allclose(z, [-2.0, -1.0, 0.0, 1.0, 2.0], atol=0.05)
    # beyond the reference: the exponential tail keeps ranking, far below 1e-16 included
    far = normal_scores(reference, np.array([10.0, 40.0, -40.0]))
    assert 4.0 < far[0] < far[1] and far[2] < -4.0 and np.isfinite(far).all()


def test_copula_density_is_the_mahalanobis_distance_of_correlated_normals():
    rng = np.random.default_rng(2)
    correlation = np.array([[1.0, 0.8], [0.8, 1.0]])
    sample = rng.multivariate_normal([0.0, 0.0], correlation, size=20_000)
    part_a = {"u": sample[:, 0], "v": sample[:, 1]}
    t_of = copula_density_candidate(part_a, ("u", "v"))
    points = np.array([[2.0, 2.0], [2.0, -2.0], [0.0, 0.0]])
    expected = np.einsum("ni,ij,nj->n", points, np.linalg.inv(correlation), points)
    np.testing.assert_allclose(
        t_of({"u": points[:, 0], "v": points[:, 1]}), expected, rtol=0.1, atol=0.05
    )
    # in distribution T follows chi^2 with 2 degrees of freedom: its 95th percentile is 5.99
    fresh = rng.multivariate_normal([0.0, 0.0], correlation, size=5_000)
    assert np.quantile(t_of({"u": fresh[:, 0], "v": fresh[:, 1]}), 0.95) == pytest.approx(
        5.99, rel=0.1
    )
