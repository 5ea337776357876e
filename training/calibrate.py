"""``trustgc calibrate``: fit the trust layer's reference distributions for a model artifact.

The calibration split is re-derived from what the artifact's manifest recorded at training time
(data set, size, seed), so it is exactly the split the model never trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data import ImageDataset, load_recorded, split_calibration
from trustgc.artifact import load_model, weights_sha256
from trustgc.background import background_dir, load_background
from trustgc.inference import model_outputs
from trustgc.preprocess import pixels_to_tensor
from trustgc.trust.calibration import (
    DEFAULT_INTERPOLATION,
    Calibration,
    fit_calibration,
    save_calibration,
)
from trustgc.trust.pvalues import Interpolation
from trustgc.trust.statistics import computable, compute_statistics

__all__ = ["calibration_split", "calibrate_artifact", "dataset_statistics"]


def calibration_split(training: dict, data_dir: Path | None) -> ImageDataset:
    """The held-out calibration images the model's training run carved out."""
    full = load_recorded(training, "train", data_dir)  # the recorded location unless given
    _, calibration = split_calibration(
        full, int(training["calibration_size"]), int(training["calibration_seed"])
    )
    return calibration


def dataset_statistics(
    model, images: np.ndarray, device: str = "cpu", background=None
) -> dict[str, np.ndarray]:
    """Every trust statistic the model (with its background flow, if any) can compute, for
    uint8 images stored channels-last (N, H, W, C)."""
    pixels = pixels_to_tensor(images)
    # runs under torch.inference_mode
    outputs = model_outputs(model, pixels, 500, device, background=background)
    names = sorted(computable(background is not None))
    return compute_statistics(outputs, pixels.numpy(), names)


def calibrate_artifact(
    model_dir: Path,
    data_dir: Path | None = None,
    ood_alpha: float = 0.01,
    attack_alpha: float = 0.01,
    device: str = "cpu",
    seed: int = 0,
    component_fraction: float = 0.2,
    interpolation: Interpolation = DEFAULT_INTERPOLATION,
) -> Calibration:
    """Fit and store ``calibration.json`` in ``model_dir``; returns the calibration.

    ``component_fraction`` of the calibration split (half "A") fits the component references;
    the rest (half "B") fits the combined statistic.  B gets the larger share because the
    realised false-rejection rate of the served p-value fluctuates around alpha with a standard
    deviation of about sqrt(alpha / |B|); A only needs to resolve p-values down to ~1/|A|.
    """
    digest = weights_sha256(model_dir)  # before loading: the hash of the weights actually used
    model, manifest = load_model(model_dir, device)
    loaded = load_background(model_dir, manifest.config.input, device)
    background = None if loaded is None else loaded[0]
    calibration_set = calibration_split(manifest.training, data_dir)
    order = np.random.default_rng(seed).permutation(len(calibration_set))
    half = int(round(component_fraction * len(order)))
    statistics_a = dataset_statistics(
        model, calibration_set.images[order[:half]], device, background
    )
    statistics_b = dataset_statistics(
        model, calibration_set.images[order[half:]], device, background
    )
    split = {
        "dataset": manifest.training["dataset"],
        "calibration_size": len(order),
        "part_a": half,
        "part_b": len(order) - half,
        "split_seed": seed,
    }
    if background is not None:  # the ratio's references belong to these background weights
        split["background_weights_sha256"] = weights_sha256(background_dir(model_dir))
    calibration = fit_calibration(
        statistics_a, statistics_b, ood_alpha, attack_alpha, split, interpolation
    ).model_copy(update={"weights_sha256": digest})
    save_calibration(model_dir, calibration)
    return calibration
