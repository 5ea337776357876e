"""The one place where likelihoods, posteriors and bits/dim are computed from latents.

With z = f(x), log|det J_f(x)| from the flow (input normalisation included) and the Gaussian
mixture head (paper Eq. 2-4):

    log q(x|y)  = -||z - mu_y||^2 / 2 - (D / 2) log(2 pi) + log|det J_f(x)|
    log q(x)    = logsumexp_y( log q(x|y) + log p(y) )
    q(y|x)      = softmax_y( -||z - mu_y||^2 / 2 + log p(y) )
    bits/dim    = ( -log q(x) / D + log 256 ) / log 2

x is the image scaled to [0, 1]; the ``log 256`` term turns that density into the usual
bits/dim of 8-bit pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from trustgc.head import GaussianMixtureHead

__all__ = [
    "LOG_256",
    "LatentScores",
    "bits_per_dim",
    "class_logits",
    "gaussian_log_normaliser",
    "score_latents",
]

LOG_256 = math.log(256.0)


def gaussian_log_normaliser(dim: int) -> float:
    """log of the N(0, I) density's constant in D dimensions: -(D / 2) log(2 pi)."""
    return -0.5 * dim * math.log(2.0 * math.pi)


def class_logits(squared_distances: Tensor, log_prior: Tensor) -> Tensor:
    """l_y = -||z - mu_y||^2 / 2 + log p(y): the logits whose softmax is q(y|x) (paper Eq. 7)."""
    return -0.5 * squared_distances + log_prior


def bits_per_dim(log_density: Tensor, dim: int) -> Tensor:
    """Bits per dimension of 8-bit images from log q(x) of the [0, 1]-scaled image."""
    return (-log_density / dim + LOG_256) / math.log(2.0)


@dataclass(frozen=True)
class LatentScores:
    """Everything the classifier says about a batch, computed once from (z, log-det).

    Shapes: (B, K) for per-class tensors, (B,) for per-sample ones.
    """

    logits: Tensor  # -||z - mu_y||^2 / 2 + log p(y)
    log_posterior: Tensor  # log q(y|x)
    class_log_likelihood: Tensor  # log q(x|y)
    log_likelihood: Tensor  # log q(x)
    squared_distances: Tensor  # ||z - mu_y||^2
    logdet: Tensor  # log|det J_f(x)|
    latents: Tensor  # z = f(x), (B, D)
    dim: int  # D, the number of dimensions of one image
    background_log_likelihood: Tensor | None = None  # log q_bg(x) of a background flow, if run
    inputs: Tensor | None = None  # the [0, 1] images scored, for statistics of the pixels

    def bits_per_dim(self) -> Tensor:
        """Marginal bits/dim of each sample."""
        return bits_per_dim(self.log_likelihood, self.dim)

    def class_bits_per_dim(self) -> Tensor:
        """Class-conditional bits/dim, -log q(x|y) expressed per dimension, shape (B, K)."""
        return bits_per_dim(self.class_log_likelihood, self.dim)


def score_latents(
    z: Tensor, logdet: Tensor, head: GaussianMixtureHead, inputs: Tensor | None = None
) -> LatentScores:
    """All likelihood quantities for latents ``z`` (B, D) with flow log-dets ``logdet`` (B,);
    ``inputs``, the images z came from, are kept for the statistics of the pixels."""
    if logdet.shape != (z.shape[0],):
        raise ValueError(f"logdet must have shape ({z.shape[0]},), got {tuple(logdet.shape)}")
    dim = z.shape[1]
    squared = head.squared_distances(z)
    log_prior = head.log_prior().to(z.dtype)
    logits = class_logits(squared, log_prior)
    class_log_likelihood = -0.5 * squared + gaussian_log_normaliser(dim) + logdet.unsqueeze(1)
    log_likelihood = torch.logsumexp(class_log_likelihood + log_prior, dim=1)
    return LatentScores(
        logits=logits,
        log_posterior=torch.log_softmax(logits, dim=1),
        class_log_likelihood=class_log_likelihood,
        log_likelihood=log_likelihood,
        squared_distances=squared,
        logdet=logdet,
        latents=z,
        dim=dim,
        inputs=inputs,
    )
