"""``trustgc evaluate``: accuracy, likelihood and calibration metrics of a model on a test set."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.data import ImageDataset, load_recorded
from training.metrics import accuracy, authors_calibration_errors, overconfidence_error, top1_ece
from trustgc.artifact import load_model
from trustgc.inference import ModelOutputs, model_outputs
from trustgc.preprocess import pixels_to_tensor
from trustgc.scoring import bits_per_dim

__all__ = ["evaluate_artifact", "evaluate_model", "metrics_from_outputs"]


def metrics_from_outputs(outputs: ModelOutputs, labels: np.ndarray) -> dict[str, float]:
    """Test metrics of one model (method-notes "Calibration metrics").

    L_Y is the plain cross-entropy (no label smoothing); L_X is -log q(x) / D in nats.
    """
    probabilities = outputs.probabilities
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    authors = authors_calibration_errors(probabilities, labels)
    metrics: dict[str, float] = {
        "accuracy": accuracy(probabilities, labels),
        "l_y": float(-outputs.log_posterior[np.arange(len(labels)), labels].mean()),
        "ece_top1": top1_ece(probabilities, labels),
        "ece_authors": authors["ece"],
        "mce_authors": authors["mce"],
        "ice_authors": authors["ice"],
        "oce": overconfidence_error(probabilities, labels),
        "num_samples": float(len(labels)),
    }
    if outputs.is_generative:
        assert outputs.log_likelihood is not None
        metrics["l_x"] = float((-outputs.log_likelihood / outputs.dim).mean())
        metrics["bits_per_dim"] = float(bits_per_dim(outputs.log_likelihood, outputs.dim).mean())
    return {
        key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in metrics.items()
    }


def evaluate_model(
    model: nn.Module,
    dataset: ImageDataset,
    device: str | torch.device = "cpu",
    batch_size: int = 500,
) -> dict[str, Any]:
    outputs = model_outputs(model, pixels_to_tensor(dataset.images), batch_size, device)
    return metrics_from_outputs(outputs, dataset.labels)


def evaluate_artifact(
    model_dir: Path, data_dir: Path | None = None, device: str = "cpu", limit: int | None = None
) -> dict[str, Any]:
    """Evaluate a model artifact on its training data set's test split (read from where the
    manifest recorded it unless ``data_dir`` is given)."""
    model, manifest = load_model(model_dir, device)
    dataset = load_recorded(manifest.training, "test", data_dir)
    if limit is not None:
        dataset = dataset.subset(np.arange(min(limit, len(dataset))))
    return evaluate_model(model, dataset, device)
