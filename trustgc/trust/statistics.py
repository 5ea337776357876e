"""Per-image test statistics computed from one forward pass (and, for one, the raw pixels).

Each statistic is a function of a batch's :class:`~trustgc.inference.ModelOutputs`.  Their
in-distribution laws are learned empirically by calibration, so none needs a closed form.

- ``typicality``: -log q(x) / D, nats per dimension: the paper's typicality test (two-sided).
- ``complexity_corrected``: (-log2 q(x) - L(x)) / D with L(x) the image's length in bits under a
  generic lossless compressor (PNG).  Serra et al. (ICLR 2020): simple images such as MNIST
  digits get high likelihood from any model; subtracting their complexity cancels that.
  OoD inputs are those the model explains *no better* than PNG does (one-sided, upper).
- ``max_posterior``: -max_y log q(y|x): the classifier's own doubt (one-sided, upper).
- ``class_distance``: ||z - mu_yhat||^2 / D, the latent distance to the predicted class mean: a
  class-conditional typicality test.  Adversarial inputs are pushed to a class's posterior
  without becoming typical samples of that class (two-sided).
- ``logit_margin``: log q(top|x) - log q(second|x), the logit gap between the two most likely
  classes: over-confidence (one-sided, upper).  The GC's margins are bounded by the geometry of
  its class means; confident attacks go beyond them.
- ``complexity_excess``: -complexity_corrected, upper: the image is harder for PNG than its
  likelihood says.  On natural images the two code lengths move together; an adversarial
  perturbation adds incompressible pixel noise (+1,200-1,400 bits of PNG on Fashion-MNIST)
  while the attacker keeps the likelihood typical.  PNG length has no gradient to follow.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from trustgc.inference import ModelOutputs

__all__ = ["STATISTICS", "compute_statistics", "png_code_length_bits"]


def png_code_length_bits(pixels: np.ndarray) -> np.ndarray:
    """PNG size in bits of each uint8 image (N, C, H, W), C in {1, 3}: L(x) of Serra et al."""
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 (N, 1|3, H, W), got {pixels.dtype} {pixels.shape}")
    lengths = np.empty(pixels.shape[0], dtype=np.float64)
    for index, image in enumerate(pixels):
        array = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
        lengths[index] = 8.0 * buffer.tell()
    return lengths


def _typicality(outputs: ModelOutputs, pixels: np.ndarray) -> np.ndarray:
    return -outputs.log_likelihood / outputs.dim


def _complexity_corrected(outputs: ModelOutputs, pixels: np.ndarray) -> np.ndarray:
    model_bits = -outputs.log_likelihood / math.log(2.0) + 8.0 * outputs.dim  # 8-bit pixels
    return (model_bits - png_code_length_bits(pixels)) / outputs.dim


def _max_posterior(outputs: ModelOutputs, pixels: np.ndarray) -> np.ndarray:
    """-log q(top|x).  For a confident image q(top|x) = 1 - eps with eps ~ 1e-9: computed as
    -log1p(-sum of the other posteriors), every digit of eps survives, where 1 - eps would lose
    them; the ranking of confident images then rests on their posteriors, not on rounding."""
    log_posterior = outputs.log_posterior
    top = log_posterior.argmax(axis=1)
    rows = np.arange(top.size)
    is_top = np.arange(log_posterior.shape[1]) == top[:, None]
    others = np.exp(np.where(is_top, -np.inf, log_posterior)).sum(axis=1)
    direct = -log_posterior[rows, top]
    return np.where(others < 0.5, -np.log1p(-np.minimum(others, 0.5)), direct)


def _class_distance(outputs: ModelOutputs, pixels: np.ndarray) -> np.ndarray:
    predicted = outputs.log_posterior.argmax(axis=1)
    return outputs.squared_distances[np.arange(predicted.size), predicted] / outputs.dim


def _logit_margin(outputs: ModelOutputs, pixels: np.ndarray) -> np.ndarray:
    top_two = np.sort(outputs.log_posterior, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


STATISTICS: dict[str, Callable[[ModelOutputs, np.ndarray], np.ndarray]] = {
    "typicality": _typicality,
    "complexity_corrected": _complexity_corrected,
    "max_posterior": _max_posterior,
    "class_distance": _class_distance,
    "logit_margin": _logit_margin,
}
#: Statistics that are another one's negation (the other tail as a one-sided upper test): each
#: is computed from its source, so the PNG encoding behind both complexity tests runs once.
NEGATED = {"complexity_excess": "complexity_corrected"}


def compute_statistics(
    outputs: ModelOutputs, pixels: np.ndarray, names: list[str] | tuple[str, ...]
) -> dict[str, np.ndarray]:
    """The named statistics for a batch; ``pixels`` are the uint8 inputs (N, C, H, W)."""
    if not outputs.is_generative:
        raise ValueError("trust statistics need a generative model (likelihoods)")
    known = set(STATISTICS) | set(NEGATED)
    unknown = set(names) - known
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; known: {sorted(known)}")
    sources = {NEGATED.get(name, name) for name in names}
    computed = {name: STATISTICS[name](outputs, pixels) for name in sorted(sources)}
    return {name: -computed[NEGATED[name]] if name in NEGATED else computed[name] for name in names}
