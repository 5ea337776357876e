"""Native explanations of the IB-INN (paper Sec. 4.2): heatmaps, salience, decision space.

Everything here is a re-arrangement of the model's own output, not a post-hoc estimate: each
map sums *exactly* to the quantity it explains.

Spatial maps and the flat couplings
-----------------------------------
The paper defines ``w^(y) = DCT^-1(z - mu_y)`` (Eq. 8) for a model whose latent z *is* the DCT
output.  Our models may add ``flat_blocks`` fully connected couplings after the DCT pooling, in
which case z is not a DCT spectrum of the last feature map any more.  We nevertheless define

    w^(y) = DCT^-1(z - mu_y), reshaped to the (C, H, W) grid of ``ModelConfig.latent_shape``,

i.e. the residual vector is read as a DCT coefficient grid (index = frequency * C + channel,
frequencies in raster order, exactly as :class:`~trustgc.layers.DCTPooling` lays them out) and
mapped back through the inverse DCT only; the flat couplings are treated as part of the latent
space.  Because the DCT is orthonormal, ``sum_kl ||w_kl^(y)||^2 = ||z - mu_y||^2`` holds exactly
either way, so every decomposition below is exact; only with ``flat_blocks = 0`` is ``w^(y)``
also literally the last feature map minus the inverse-DCT of the class mean.

All sums are computed in float64 internally (no gradients) and cast back to the latents' dtype
at the end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from numpy.polynomial.hermite_e import hermegauss
from scipy.special import expit
from scipy.stats import chi, norm
from torch import Tensor

from trustgc.head import GaussianMixtureHead
from trustgc.layers.resampling import dct_matrix
from trustgc.scoring import gaussian_log_normaliser

__all__ = [
    "class_distances",
    "class_similarity",
    "decision_space",
    "energy_maps",
    "expected_pairwise_posterior",
    "posterior_heatmaps",
    "salience_map",
]

# Upper bound on the elements of one (batch, classes, D) residual block, so that the ImageNet
# layout (K = 1000, D = 150,528) is processed in class chunks instead of one huge tensor.
_CHUNK_ELEMENTS = 1 << 24
_HERMITE_NODES = 80


# ------------------------------------------------------------------------------ validation


def _check_latents(latents: Tensor, head: GaussianMixtureHead) -> None:
    if not isinstance(latents, Tensor) or latents.dim() != 2 or latents.shape[1] != head.dim:
        shape = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
        raise ValueError(f"expected latents of shape (B, {head.dim}), got {shape}")


def _check_latent_shape(latent_shape: Sequence[int], dim: int) -> tuple[int, int, int]:
    shape = tuple(int(size) for size in latent_shape)
    if len(shape) != 3 or min(shape) <= 0 or math.prod(shape) != dim:
        raise ValueError(
            f"expected latent_shape (C, H, W) of positive sizes with C*H*W = {dim}, "
            f"got {tuple(latent_shape)}"
        )
    return shape  # type: ignore[return-value]


def _check_logdet(logdet: Tensor, batch: int) -> None:
    if not isinstance(logdet, Tensor) or tuple(logdet.shape) != (batch,):
        shape = tuple(logdet.shape) if isinstance(logdet, Tensor) else type(logdet).__name__
        raise ValueError(f"expected logdet of shape ({batch},), got {shape}")


# ------------------------------------------------------------------------------ spatial maps


def _class_means(head: GaussianMixtureHead, classes: Tensor) -> Tensor:
    """mu_y for the given class indices, (len(classes), D) in float64, without materialising
    the other classes' low-rank part."""
    full = head.full_means.detach()[classes].double()
    if not head.is_low_rank:
        return full
    coefficients = head.low_rank_coefficients.detach()[classes].double()
    rest = coefficients @ head.low_rank_basis.detach().double()
    return torch.cat([full, rest], dim=1)


def _inverse_dct(vectors: Tensor, latent_shape: tuple[int, int, int]) -> Tensor:
    """DCT^-1 of vectors (..., D) laid out as ``DCTPooling`` output -> maps (..., C, H, W).

    Vector index = (u * W + v) * C + c for frequency (u, v) and channel c; the 2D inverse is
    x[c, h, w] = sum_uv A_H[u, h] X[u, v, c] A_W[v, w] with the orthonormal DCT-II matrices A.
    """
    channels, height, width = latent_shape
    a_h = dct_matrix(height, vectors.dtype).to(vectors.device)
    a_w = dct_matrix(width, vectors.dtype).to(vectors.device)
    grid = vectors.reshape(*vectors.shape[:-1], height, width, channels)
    return torch.einsum("uh,...uvc,vw->...chw", a_h, grid, a_w)


def energy_maps(latents: Tensor, head: GaussianMixtureHead, latent_shape: Sequence[int]) -> Tensor:
    """Local energies e_kl^(y) = ||w_kl^(y)||^2 / 2, shape (B, K, H, W), in float64.

    w^(y) = DCT^-1(z - mu_y) reshaped to (C, H, W) (see the module docstring for models with
    flat couplings); the norm at position (k, l) runs over the C channels.  By orthonormality,
    sum_kl e_kl^(y) = ||z - mu_y||^2 / 2, the class's whole Gaussian energy.
    """
    _check_latents(latents, head)
    shape = _check_latent_shape(latent_shape, head.dim)
    z = latents.detach().double()
    batch, dim = z.shape
    chunk = max(1, _CHUNK_ELEMENTS // max(1, batch * dim))
    maps = []
    for start in range(0, head.num_classes, chunk):
        classes = torch.arange(start, min(start + chunk, head.num_classes), device=z.device)
        residual = z.unsqueeze(1) - _class_means(head, classes).to(z.device).unsqueeze(0)
        maps.append(0.5 * _inverse_dct(residual, shape).pow(2).sum(dim=2))
    return torch.cat(maps, dim=1)


def _log_posterior(energies: Tensor, head: GaussianMixtureHead) -> tuple[Tensor, Tensor]:
    """From e (B, K, H, W): log q(y|x) (B, K) and Z = logsumexp_y(-E_y + log p(y)) (B,)."""
    log_prior = head.log_prior().detach().double().to(energies.device)
    logits = -energies.sum(dim=(2, 3)) + log_prior
    log_normaliser = torch.logsumexp(logits, dim=1)
    return logits - log_normaliser.unsqueeze(1), log_normaliser


def posterior_heatmaps(
    latents: Tensor,
    head: GaussianMixtureHead,
    latent_shape: Sequence[int],
    contrast: float | None = None,
) -> Tensor:
    """Posterior heatmaps Q(k, l, y) with sum_kl Q(k, l, y) = log q(y|x) exactly (paper Eq. 10).

        Q(k, l, y) = -e_kl^(y) + a_kl (log p(y) - Z)
        e_kl^(y)   = ||w_kl^(y)||^2 / 2,   w^(y) = DCT^-1(z - mu_y) reshaped (C, H, W)
        Z          = logsumexp_y( -sum_kl e_kl^(y) + log p(y) )

    Since sum_kl a_kl = 1, the sum over positions is -||z - mu_y||^2/2 + log p(y) - Z =
    log q(y|x) for every y, whatever the weights a.  The weights:

    * ``contrast=None``: uniform, a_kl = 1 / (H W).
    * ``contrast=c > 0``: a_kl = softmax_kl( -ebar_kl / c ), where ebar_kl = sum_y q(y|x)
      e_kl^(y) is the posterior-weighted local energy (so -ebar_kl is the local evidence: how
      well the plausible classes explain position (k, l)).  c is a temperature: c -> inf gives
      back the uniform weights; smaller c hands the (positive) normalising term log p(y) - Z
      to the best-explained positions, which makes the maps sharper (more contrast).

    Returns (B, K, H, W) in the latents' dtype (computed in float64).
    """
    if contrast is not None and not (math.isfinite(contrast) and contrast > 0):
        raise ValueError(f"expected contrast None or a finite value > 0, got {contrast}")
    energies = energy_maps(latents, head, latent_shape)
    log_posterior, log_normaliser = _log_posterior(energies, head)
    batch, _, height, width = energies.shape
    if contrast is None:
        weights = energies.new_full((batch, height, width), 1.0 / (height * width))
    else:
        mean_energy = (log_posterior.exp()[:, :, None, None] * energies).sum(dim=1)
        scores = (-mean_energy / contrast).reshape(batch, -1)
        weights = torch.softmax(scores, dim=1).reshape(batch, height, width)
    log_prior = head.log_prior().detach().double().to(energies.device)
    offset = log_prior.unsqueeze(0) - log_normaliser.unsqueeze(1)  # log p(y) - Z, (B, K)
    heatmaps = -energies + weights.unsqueeze(1) * offset[:, :, None, None]
    return heatmaps.to(latents.dtype)


def salience_map(
    latents: Tensor, logdet: Tensor, head: GaussianMixtureHead, latent_shape: Sequence[int]
) -> Tensor:
    """Salience S(k, l) with sum_kl S(k, l) = log q(x) exactly, shape (B, H, W).

    With posterior weights pi_y = q(y|x), the identity -E_y + log p(y) - log pi_y = Z (for
    every y, E_y = ||z - mu_y||^2 / 2) gives log q(x) = Z - (D/2) log 2pi + log|det J| as

        S(k, l) = -sum_y pi_y e_kl^(y)
                  + [ sum_y pi_y (log p(y) - log pi_y) - (D/2) log(2 pi) + log|det J| ] / (H W)

    i.e. each position gets its share of the posterior-weighted Gaussian energy (low salience
    where no plausible class explains the position), while the position-free terms (prior
    cross-entropy and posterior entropy, Gaussian constant, flow log-det) are spread uniformly.
    Returned in the latents' dtype (computed in float64).
    """
    _check_latents(latents, head)
    _check_logdet(logdet, latents.shape[0])
    energies = energy_maps(latents, head, latent_shape)
    log_posterior, _ = _log_posterior(energies, head)
    posterior = log_posterior.exp()
    log_prior = head.log_prior().detach().double().to(energies.device)
    _, _, height, width = energies.shape
    spatial = -(posterior[:, :, None, None] * energies).sum(dim=1)
    constant = (
        (posterior * (log_prior.unsqueeze(0) - log_posterior)).sum(dim=1)
        + gaussian_log_normaliser(head.dim)
        + logdet.detach().double()
    )
    return (spatial + (constant / (height * width))[:, None, None]).to(latents.dtype)


# ------------------------------------------------------------------------------ decision space


def decision_space(latents: Tensor, head: GaussianMixtureHead, top: int = 5) -> list[dict]:
    """2D decision-space coordinates of each latent (paper Fig. 3), one dict per image.

    Let t_1, ..., t_top be the classes by decreasing q(y|x), m_i = mu_{t_i} and
    S = span{m_i - m_1} (the affine span of the top means through m_1, dimension top - 1).
    Origin at m_1, unit axis e = (m_2 - m_1) / ||m_2 - m_1||, and for a point p:

        x(p) = (p - m_1) . e
        y(p) = || P_S (p - m_1) - x(p) e ||       (distance from the axis within S, >= 0)

    so m_1 = (0, 0), m_2 = (||m_2 - m_1||, 0) and the plotted distance of every mean from m_1
    is its true distance.  For z, ``residual_distance`` = ||(z - m_1) - P_S (z - m_1)|| is
    the part outside S (x^2 + y^2 + residual^2 = ||z - m_1||^2).

    90% circles of a unit Gaussian component: horizontally the half width
    ``norm.ppf(0.95)`` = 1.645 (one dimension, two-sided); vertically the radial quantile
    ``chi.ppf(0.9, df=top - 2)`` (2.50 for top = 5; 0.0 for top = 2, where S is the axis).

    Keys: ``classes`` (top,) int, ``posterior`` (top,) q(y|x), ``means_xy`` (top, 2),
    ``z_xy`` (2,), ``residual_distance``, ``radius_horizontal``, ``radius_vertical`` (floats).
    """
    _check_latents(latents, head)
    if not 2 <= top <= head.num_classes:
        raise ValueError(f"expected 2 <= top <= {head.num_classes}, got {top}")
    z = latents.detach().double()
    log_prior = head.log_prior().detach().double().to(z.device)
    with torch.no_grad():
        squared = head.squared_distances(z)
    log_posterior = torch.log_softmax(-0.5 * squared + log_prior, dim=1)
    radius_horizontal = float(norm.ppf(0.95))
    radius_vertical = float(chi.ppf(0.9, df=top - 2)) if top > 2 else 0.0
    items = []
    for row in range(z.shape[0]):
        order = torch.argsort(log_posterior[row], descending=True)[:top]
        means = _class_means(head, order).cpu().numpy()
        point = z[row].cpu().numpy()
        axis = means[1] - means[0]
        length = float(np.linalg.norm(axis))
        if length == 0.0:
            raise ValueError(f"classes {int(order[0])} and {int(order[1])} have identical means")
        axis /= length
        others = means[2:] - means[0]
        others = others - np.outer(others @ axis, axis)
        basis = np.zeros((0, axis.size))
        if others.size:
            _, singular, vt = np.linalg.svd(others, full_matrices=False)
            keep = singular > singular.max(initial=0.0) * 1e-10
            basis = vt[keep]

        def coordinates(p: np.ndarray, basis=basis, axis=axis, origin=means[0]):
            offset = p - origin
            x = float(offset @ axis)
            across = offset - x * axis
            inside = basis @ across
            residual = across - basis.T @ inside
            return x, float(np.linalg.norm(inside)), float(np.linalg.norm(residual))

        means_xy = np.array([coordinates(mean)[:2] for mean in means])
        z_x, z_y, z_residual = coordinates(point)
        items.append(
            {
                "classes": order.cpu().numpy(),
                "posterior": log_posterior[row, order].exp().cpu().numpy(),
                "means_xy": means_xy,
                "z_xy": np.array([z_x, z_y]),
                "residual_distance": z_residual,
                "radius_horizontal": radius_horizontal,
                "radius_vertical": radius_vertical,
            }
        )
    return items


# ------------------------------------------------------------------------------ class similarity


def expected_pairwise_posterior(distance: float | np.ndarray) -> np.ndarray:
    """E_u[ sigmoid(d u - d^2 / 2) ], u ~ N(0, 1): the expected posterior of class B for
    inputs of class A when ||mu_A - mu_B|| = d (two unit Gaussians, equal priors).

    For z = mu_A + n, logit_B - logit_A = (||z - mu_A||^2 - ||z - mu_B||^2) / 2 = d u - d^2/2
    with u = n . (mu_B - mu_A) / d.  Computed by 80-node Gauss-Hermite (probabilists')
    quadrature; d = 0 gives 0.5, d = 1, 2, 3, 4 give 0.398, 0.225, 0.099, 0.034.
    Returns an array of the input's shape (0-d for a scalar).
    """
    d = np.asarray(distance, dtype=np.float64)
    if not np.all(np.isfinite(d)) or np.any(d < 0):
        raise ValueError(f"expected finite distances >= 0, got {distance}")
    nodes, weights = hermegauss(_HERMITE_NODES)
    weights = weights / math.sqrt(2.0 * math.pi)
    values = expit(d[..., None] * nodes - 0.5 * d[..., None] ** 2)
    return values @ weights


def class_distances(head: GaussianMixtureHead) -> np.ndarray:
    """Pairwise distances ||mu_i - mu_j|| of the class means, (K, K) float64, zero diagonal.

    Low-rank means use ||f_i - f_j||^2 + (c_i - c_j) B B^T (c_i - c_j)^T without materialising
    the K x D matrix.
    """
    if not isinstance(head, GaussianMixtureHead):
        raise ValueError(f"expected a GaussianMixtureHead, got {type(head).__name__}")

    def squared(vectors: Tensor, gram: Tensor | None = None) -> Tensor:
        products = vectors @ vectors.T if gram is None else vectors @ gram @ vectors.T
        norms = products.diagonal()
        return norms[:, None] + norms[None, :] - 2.0 * products

    full = head.full_means.detach().double()
    total = squared(full)
    if head.is_low_rank:
        basis = head.low_rank_basis.detach().double()
        total = total + squared(head.low_rank_coefficients.detach().double(), basis @ basis.T)
    distances = total.clamp_min(0.0).sqrt().cpu().numpy()
    np.fill_diagonal(distances, 0.0)
    return distances


def class_similarity(head: GaussianMixtureHead) -> np.ndarray:
    """Expected pairwise posteriors S[A, B] = expected_pairwise_posterior(||mu_A - mu_B||),
    (K, K), symmetric (paper Fig. 4).  The diagonal is NaN: a class compared with itself is not
    a decision (the formula would give 0.5); plots mask it."""
    similarity = expected_pairwise_posterior(class_distances(head))
    np.fill_diagonal(similarity, np.nan)
    return similarity
