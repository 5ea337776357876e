"""Per-channel affine layers: the learned ActNorm and the fixed input normalisation.

Both scale every channel by a positive factor, so the log-det is the number of spatial positions
times the sum of the channels' log-scales.  The fixed normalisation is a layer (not a
preprocessing step) so that its log-det enters log q(x) automatically, in one place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from trustgc.layers.base import InvertibleLayer

__all__ = ["ActNorm", "InputNormalization"]


def _spatial_size(x: Tensor) -> int:
    """Number of positions each channel occupies in one sample (1 for flat vectors)."""
    return math.prod(x.shape[2:])


def _channel_view(values: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-channel vector so it broadcasts over ``x``'s spatial axes."""
    return values.view(1, -1, *([1] * (x.dim() - 2)))


class ActNorm(InvertibleLayer):
    """y = x * exp(log_scale_c) + bias_c, learned per channel (identity at initialisation).

    log|det J| = H * W * sum_c log_scale_c.  No data-dependent initialisation: it would give
    different parameters on each DDP rank.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = x * _channel_view(self.log_scale.exp(), x) + _channel_view(self.bias, x)
        logdet = (self.log_scale.sum() * _spatial_size(x)).expand(x.shape[0])
        return y, logdet.to(x.dtype)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        x = (y - _channel_view(self.bias, y)) * _channel_view((-self.log_scale).exp(), y)
        logdet = (-self.log_scale.sum() * _spatial_size(y)).expand(y.shape[0])
        return x, logdet.to(y.dtype)


class InputNormalization(InvertibleLayer):
    """Fixed y = (x - mean_c) / std_c, the data set's per-channel normalisation.

    log|det J| = -H * W * sum_c log std_c: it belongs to log q(x) of the [0, 1] image.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, std = self.mean.to(x.dtype), self.std.to(x.dtype)
        y = (x - _channel_view(mean, x)) / _channel_view(std, x)
        logdet = (-std.log().sum() * _spatial_size(x)).expand(x.shape[0])
        return y, logdet

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        mean, std = self.mean.to(y.dtype), self.std.to(y.dtype)
        x = y * _channel_view(std, y) + _channel_view(mean, y)
        logdet = (std.log().sum() * _spatial_size(y)).expand(y.shape[0])
        return x, logdet
