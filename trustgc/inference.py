"""Batched forward passes over many images, for evaluation, calibration and serving.

``model_outputs`` is the one loop that turns uint8 images into the per-image numbers that every
later step needs; it works for the IB-INN and for the discriminative baseline (which has no
likelihoods, so those entries are absent).  Given a background flow (trustgc/background.py), it
also runs that flow on the same inputs: its log-likelihood feeds the likelihood-ratio statistic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from trustgc.preprocess import pixels_to_unit
from trustgc.scoring import LatentScores, score_latents

__all__ = ["ModelOutputs", "latent_scores", "model_outputs", "score_batch"]


@dataclass(frozen=True)
class ModelOutputs:
    """Per-image results as float64 numpy arrays (N rows each)."""

    log_posterior: np.ndarray  # (N, K) log q(y|x)
    log_likelihood: np.ndarray | None  # (N,) log q(x); None for a discriminative model
    class_log_likelihood: np.ndarray | None  # (N, K) log q(x|y)
    squared_distances: np.ndarray | None  # (N, K) ||z - mu_y||^2
    dim: int
    latents: np.ndarray | None = None  # (N, D) z, kept only when asked for (explanations)
    background_log_likelihood: np.ndarray | None = None  # (N,) log q_bg(x); None: no background

    @property
    def probabilities(self) -> np.ndarray:
        return np.exp(self.log_posterior)

    @property
    def is_generative(self) -> bool:
        return self.log_likelihood is not None


def latent_scores(model: nn.Module, x: Tensor, background: nn.Module | None = None) -> LatentScores:
    """A generative model's scores for [0, 1] images at the served precision.

    The flow runs in float32; its latents are scored in float64, so the posterior of a
    confident image (1 - 1e-9) is not rounded to 1 and two runtimes (torch, ONNX Runtime)
    disagree on the scores only as much as their latents do.  The head is ~1% of the cost.
    With a ``background`` flow its log-likelihood of the same x is filled in (differentiable,
    like everything else here, when called outside inference mode).
    """
    z, logdet = model(x)
    scores = score_latents(z.double(), logdet.double(), model.head, inputs=x)
    if background is None:
        return scores
    return replace(scores, background_log_likelihood=latent_scores(background, x).log_likelihood)


def score_batch(
    model: nn.Module,
    x: Tensor,
    keep_latents: bool = False,
    background: nn.Module | None = None,
) -> dict[str, Tensor]:
    """One batch of [0, 1] images -> named output tensors (see :class:`ModelOutputs`)."""
    if hasattr(model, "score"):
        scores = latent_scores(model, x, background)
        outputs = {
            "log_posterior": scores.log_posterior,
            "log_likelihood": scores.log_likelihood,
            "class_log_likelihood": scores.class_log_likelihood,
            "squared_distances": scores.squared_distances,
        }
        if keep_latents:
            outputs["latents"] = scores.latents
        if background is not None:
            outputs["background_log_likelihood"] = scores.background_log_likelihood
        return outputs
    return {"log_posterior": torch.log_softmax(model(x), dim=1)}


@torch.inference_mode()
def model_outputs(
    model: nn.Module,
    pixels: Tensor,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    keep_latents: bool = False,
    background: nn.Module | None = None,
) -> ModelOutputs:
    """Run ``model`` (and its ``background`` flow, if given) over uint8 images (N, C, H, W) in
    batches, in eval mode."""
    model.eval()
    if background is not None:
        background.eval()
    collected: dict[str, list[np.ndarray]] = {}
    for start in range(0, pixels.shape[0], batch_size):
        x = pixels_to_unit(pixels[start : start + batch_size].to(device))
        for key, value in score_batch(model, x, keep_latents, background).items():
            collected.setdefault(key, []).append(value.double().cpu().numpy())
    arrays = {key: np.concatenate(parts) for key, parts in collected.items()}
    return ModelOutputs(
        log_posterior=arrays["log_posterior"],
        log_likelihood=arrays.get("log_likelihood"),
        class_log_likelihood=arrays.get("class_log_likelihood"),
        squared_distances=arrays.get("squared_distances"),
        dim=int(np.prod(pixels.shape[1:])),
        latents=arrays.get("latents"),
        background_log_likelihood=arrays.get("background_log_likelihood"),
    )
