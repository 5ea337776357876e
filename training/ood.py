"""``trustgc ood``: how well the trust layer separates OoD sets from in-distribution test data.

For each OoD set: ROC-AUC (%) of the production OoD p-value, of the paper's two-sided typicality
test, of the one-sided likelihood and of the max-posterior baseline.  Also the rejection rate on
the in-distribution test set at several alphas with its 99% binomial interval: the p-values are
valid only if that rate stays at alpha.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from training.data import load_dataset
from training.metrics import binomial_interval, roc_auc
from trustgc.inference import model_outputs
from trustgc.preprocess import pixels_to_tensor
from trustgc.trust.predictor import Predictor
from trustgc.trust.statistics import compute_statistics

__all__ = ["OOD_SETS", "evaluate_ood", "make_ood_set"]

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _noise_uniform(test: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, *test.shape[1:]), dtype=np.uint8)


def _noise_gaussian(test: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    return np.clip(rng.normal(128, 50, (n, *test.shape[1:])), 0, 255).astype(np.uint8)


def _constant(test: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    values = rng.integers(0, 256, n, dtype=np.uint8)
    return np.broadcast_to(values[:, None, None, None], (n, *test.shape[1:])).copy()


def _flipped(test: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    return test[:n, ::-1].copy()


def _inverted(test: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    return 255 - test[:n]


def _external(name: str) -> Callable:
    def load(test: np.ndarray, rng: np.random.Generator, n: int, data_dir: Path = SHARED_DATA):
        images = load_dataset(name, "test", data_dir / name).images[:n]
        if images.shape[1:] != test.shape[1:]:
            raise ValueError(f"{name} images {images.shape[1:]} do not match {test.shape[1:]}")
        return images

    return load


OOD_SETS: dict[str, Callable] = {
    "mnist": _external("mnist"),
    "notmnist": _external("notmnist"),
    "uniform_noise": _noise_uniform,
    "gaussian_noise": _noise_gaussian,
    "constant": _constant,
    "vflip": _flipped,
    "inverted": _inverted,
}


def make_ood_set(name: str, test: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    if name not in OOD_SETS:
        raise ValueError(f"unknown OoD set {name!r}; known: {sorted(OOD_SETS)}")
    return OOD_SETS[name](test, np.random.default_rng(seed), n)


def _scores(predictor: Predictor, images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: higher = more OoD, for each method compared."""
    pixels = pixels_to_tensor(images)
    outputs = model_outputs(predictor.model, pixels, 500, predictor.device)
    statistics = compute_statistics(outputs, pixels.numpy(), predictor._statistics)
    p = predictor.p_values(statistics)
    return {
        "production": -np.log(p[predictor.calibration.ood_statistic]),
        "paper_two_sided": -np.log(p["typicality"]),
        "one_sided_likelihood": statistics["typicality"],
        "max_posterior": statistics["max_posterior"],
        "p_value": p[predictor.calibration.ood_statistic],
    }


def evaluate_ood(
    model_dir: Path,
    sets: list[str],
    limit: int = 2000,
    data_dir: Path | None = None,
    alphas=(0.01, 0.05, 0.1),
) -> dict:
    predictor = Predictor.from_artifact(model_dir)
    dataset = predictor.manifest.training.get("dataset", "fashion_mnist")
    test = load_dataset(dataset, "test", data_dir).images
    in_scores = _scores(predictor, test)
    calibration = {}
    for alpha in alphas:
        rate = float(np.mean(in_scores["p_value"] < alpha))
        low, high = binomial_interval(len(test), alpha, 0.99)
        calibration[str(alpha)] = {
            "rejection_rate": rate,
            "interval_99": [low, high],
            "calibrated": low <= rate <= high,
        }
    results = {}
    for name in sets:
        ood_scores = _scores(predictor, make_ood_set(name, test, limit))
        results[name] = {
            method: 100.0 * roc_auc(in_scores[method], ood_scores[method])
            for method in ("production", "paper_two_sided", "one_sided_likelihood", "max_posterior")
        }
        results[name]["rejected_at_alpha"] = float(
            np.mean(ood_scores["p_value"] < predictor.calibration.ood_alpha)
        )
    return {
        "in_distribution": dataset,
        "num_test": len(test),
        "calibration": calibration,
        "auc_percent": results,
    }
