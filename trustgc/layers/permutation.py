"""Fixed random channel permutation: mixes which channels a coupling leaves untouched."""

from __future__ import annotations

import torch
from torch import Tensor

from trustgc.layers.base import InvertibleLayer

__all__ = ["ChannelPermutation"]


class ChannelPermutation(InvertibleLayer):
    """y[:, i] = x[:, perm[i]] with a seeded permutation stored as index buffers (log-det 0)."""

    def __init__(self, channels: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        permutation = torch.randperm(channels, generator=generator)
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, self.permutation], x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y[:, self.inverse_permutation], y.new_zeros(y.shape[0])
