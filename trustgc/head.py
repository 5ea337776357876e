"""The class-conditional Gaussian mixture in latent space: one N(mu_y, I) per class.

Class means are learned.  For very large latents (the ImageNet layout, D = 150,528 and 1,000
classes) the means are stored as the authors did: the first ``full_dims`` coordinates (the DCT's
DC coefficients) in full, the rest as a rank-``rank`` product U @ V, so distances are computed
without ever materialising a 1000 x 150528 matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GaussianMixtureHead"]


class GaussianMixtureHead(nn.Module):
    """Learned means mu_y (K x D) and log-priors log p(y) of a unit-variance Gaussian mixture."""

    def __init__(
        self,
        num_classes: int,
        dim: int,
        init_distance: float,
        full_dims: int | None = None,
        rank: int = 128,
        learn_prior: bool = False,
    ) -> None:
        super().__init__()
        full_dims = dim if full_dims is None else full_dims
        if not num_classes <= full_dims <= dim:
            raise ValueError(
                f"need num_classes <= full_dims <= dim, got {num_classes}, {full_dims}, {dim}"
            )
        self.num_classes, self.dim, self.full_dims = num_classes, dim, full_dims
        # Scaled identity: every pair of means starts at distance init_distance.
        full_means = torch.zeros(num_classes, full_dims)
        full_means[:, :num_classes] = torch.eye(num_classes) * (init_distance / math.sqrt(2.0))
        self.full_means = nn.Parameter(full_means)
        if full_dims < dim:
            self.low_rank_coefficients = nn.Parameter(torch.zeros(num_classes, rank))
            basis = torch.randn(rank, dim - full_dims, generator=torch.Generator().manual_seed(0))
            self.low_rank_basis = nn.Parameter(basis / math.sqrt(dim - full_dims))
        else:
            self.register_parameter("low_rank_coefficients", None)
            self.register_parameter("low_rank_basis", None)
        self.prior_logits = nn.Parameter(torch.zeros(num_classes), requires_grad=learn_prior)

    @property
    def is_low_rank(self) -> bool:
        return self.low_rank_basis is not None

    def log_prior(self) -> Tensor:
        """log p(y) for every class (uniform unless the priors are learned)."""
        return torch.log_softmax(self.prior_logits, dim=0)

    def means(self) -> Tensor:
        """All class means as a (K, D) matrix (materialised: avoid for huge D)."""
        if not self.is_low_rank:
            return self.full_means
        rest = self.low_rank_coefficients @ self.low_rank_basis
        return torch.cat([self.full_means, rest], dim=1)

    def squared_distances(self, z: Tensor) -> Tensor:
        """||z - mu_y||^2 for every sample and class, shape (B, K).

        Full-rank means use the direct difference (exact in floating point); low-rank means use
        ||z||^2 - 2 z.mu_y + ||mu_y||^2 with the low-rank part never expanded.
        """
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"expected latents of shape (B, {self.dim}), got {tuple(z.shape)}")
        with torch.autocast(z.device.type, enabled=False):  # likelihoods stay in fp32 under AMP
            return self._squared_distances(z)

    def _squared_distances(self, z: Tensor) -> Tensor:
        if not self.is_low_rank:
            means = self.full_means.to(z.dtype)
            return (z.unsqueeze(1) - means.unsqueeze(0)).pow(2).sum(dim=2)
        full_z, rest_z = z.split([self.full_dims, self.dim - self.full_dims], dim=1)
        coefficients = self.low_rank_coefficients.to(z.dtype)
        basis = self.low_rank_basis.to(z.dtype)
        full_means = self.full_means.to(z.dtype)
        cross = full_z @ full_means.T + (rest_z @ basis.T) @ coefficients.T
        gram = basis @ basis.T
        mean_norms = full_means.pow(2).sum(1) + ((coefficients @ gram) * coefficients).sum(1)
        return z.pow(2).sum(1, keepdim=True) - 2.0 * cross + mean_norms.unsqueeze(0)

    def sample(self, class_index: int, count: int, temperature: float = 1.0) -> Tensor:
        """Latents drawn from N(mu_y, T^2 I) for one class."""
        if not 0 <= class_index < self.num_classes:
            raise ValueError(f"class_index must lie in [0, {self.num_classes}), got {class_index}")
        mean = self.full_means[class_index]
        if self.is_low_rank:
            rest = self.low_rank_coefficients[class_index] @ self.low_rank_basis
            mean = torch.cat([mean, rest])
        return mean + temperature * torch.randn(
            count, self.dim, dtype=mean.dtype, device=mean.device
        )
