"""The second shipped model, ``model_store/fashion_mnist_robust`` (adversarially fine-tuned).

What its model card and docs/attacks_adaptive.md claim is checked here against the files:
it loads with its calibration and background flow, its p-values are calibrated on the 10,000
test images (the same Beta-Binomial intervals as the default model's test), the attack-suite
result in docs/ was measured on exactly this calibration, and its ONNX export decides like torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from training.calibrate import dataset_statistics
from training.data import load_dataset
from training.metrics import conformal_rejection_interval
from trustgc.artifact import file_sha256
from trustgc.backend import choose_backend
from trustgc.inference import latent_scores
from trustgc.preprocess import pixels_to_unit
from trustgc.trust.calibration import CALIBRATION_FILE
from trustgc.trust.predictor import Predictor
from trustgc.trust.smoothing import count_noisy_labels

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "model_store" / "fashion_mnist_robust"
ALPHAS = (0.01, 0.05, 0.1)
SUITE_RESULT = ROOT / "docs" / "results" / "robustness_gc_robust.json"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_artifact(MODEL_DIR, backend="torch")


@pytest.fixture(scope="module")
def onnx_predictor() -> Predictor:
    """The backend the servers pick for this artifact (checked in the parity test)."""
    return Predictor.from_artifact(MODEL_DIR, backend="onnxruntime")


@pytest.fixture(scope="module")
def test_images(data_set_dir) -> np.ndarray:
    return load_dataset("fashion_mnist", "test", data_set_dir("fashion_mnist")).images


def test_it_is_the_adversarially_trained_model_with_the_default_statistics(predictor) -> None:
    training = predictor.manifest.training
    assert training["config"]["adversarial"]["epsilon"] == 0.5
    default = Predictor.from_artifact(ROOT / "model_store" / "fashion_mnist")
    # same served statistics as the default model: clients read the same answer
    assert predictor.calibration.ood_statistic == default.calibration.ood_statistic
    assert predictor.calibration.attack_statistic == default.calibration.attack_statistic
    assert predictor.background is not None


def test_p_values_are_calibrated_on_the_test_set(predictor, test_images) -> None:
    statistics = dataset_statistics(predictor.model, test_images, background=predictor.background)
    p = predictor.p_values(statistics)
    failures = []
    for name, reference in predictor.calibration.combined.items():  # served OoD and attack
        n, m = int(reference.summary["n"]), p[name].size
        for alpha in ALPHAS:
            count = int(np.sum(p[name] < alpha))
            _, low, high = conformal_rejection_interval(m, n, alpha, reference.side)
            print(f"{name} alpha {alpha}: {count / m:.4f} in [{low / m:.4f}, {high / m:.4f}]")
            if not low <= count <= high:
                failures.append((name, alpha, count / m, low / m, high / m))
    assert m == 10_000
    assert not failures, failures


def test_the_documented_attack_result_was_measured_on_this_calibration() -> None:
    result = json.loads(SUITE_RESULT.read_text())
    assert result["calibration_sha256"] == file_sha256(MODEL_DIR / CALIBRATION_FILE)
    assert result["n"] == 200 and result["finished"]
    modes = {"pgd_runner_up", "cw_runner_up", "sparse_l1", "lowfreq_14", "lowfreq_7", "cw_random"}
    assert set(result["l2"]) == modes


def test_onnx_export_decides_like_torch(predictor, onnx_predictor, test_images) -> None:
    assert choose_backend(MODEL_DIR).backend == "onnxruntime"  # what the servers pick
    onnx = onnx_predictor
    pixels = test_images[:200].transpose(0, 3, 1, 2)
    a, b = predictor.score(pixels), onnx.score(pixels)
    assert np.array_equal(a.predicted_index, b.predicted_index)
    assert np.array_equal(a.decisions, b.decisions)


def test_certified_radius_holds_under_sampled_perturbations(
    predictor, onnx_predictor, test_images
) -> None:
    """Monte-Carlo ground truth for ``certify``: at distance R / 2 from a certified image (a
    random direction, and the direction that lowers the certified class's margin fastest),
    the smoothed label is still the certified one, and the share of noisy copies labelled with
    it does not contradict Cohen et al.'s bound Phi(Phi^-1(p_lower) - ||d|| / sigma)."""
    onnx = onnx_predictor
    pixels = np.ascontiguousarray(test_images[:4].transpose(0, 3, 1, 2))
    sigma = 0.25
    certificates = onnx.certify(pixels, sigma=sigma, n=1000, n0=100, alpha=0.001, seed=0)

    def labels_of(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return latent_scores(onnx.model, x).logits.argmax(1)

    generator = torch.Generator().manual_seed(1)
    checked = 0
    for image, certificate in zip(pixels, certificates, strict=True):
        if certificate.abstained:
            continue
        x = pixels_to_unit(torch.from_numpy(image[None]))[0]
        target = certificate.predicted_index
        x_grad = x[None].clone().requires_grad_(True)
        logits = latent_scores(predictor.model, x_grad).logits[0]
        margin = logits[target] - torch.cat([logits[:target], logits[target + 1 :]]).max()
        (gradient,) = torch.autograd.grad(margin, x_grad)
        directions = [torch.randn(x.shape, generator=generator), -gradient[0].float()]
        distance = certificate.radius / 2
        guaranteed = stats.norm.cdf(stats.norm.ppf(certificate.p_lower) - distance / sigma)
        for direction in directions:
            moved = x + distance * direction / direction.norm()
            counts = count_noisy_labels(labels_of, moved, sigma, 1000, 10, 500, generator)
            assert int(np.argmax(counts)) == target
            k = int(counts[target])  # Clopper-Pearson upper bound at 1 - 1e-6
            upper = 1.0 if k == 1000 else stats.beta.ppf(1 - 1e-6, k + 1, 1000 - k)
            assert upper >= guaranteed, (counts[target], guaranteed)
        checked += 1
    assert checked >= 3, [c.radius for c in certificates]
