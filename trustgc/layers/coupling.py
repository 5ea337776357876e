"""Single-sided affine coupling with a soft-clamped log-scale (Dinh et al., RealNVP).

The channels split into a passive part x1 and an active part x2.  A subnet reads x1 and predicts
(s_raw, t); with s = c * tanh(s_raw / c) (the soft clamp bounds |s| < c and keeps exp(s) tame):

    y1 = x1,   y2 = x2 * exp(s) + t,   log|det J| = sum(s)

The inverse is x2 = (y2 - t) * exp(-s), since x1 = y1 gives the subnet the same input.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustgc.layers.base import InvertibleLayer
from trustgc.layers.subnets import SubnetFactory

__all__ = ["AffineCoupling"]


class AffineCoupling(InvertibleLayer):
    """Affine coupling over dimension 1 (channels of a map, or features of a vector)."""

    def __init__(self, channels: int, subnet: SubnetFactory, clamp: float = 1.5) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling needs at least 2 channels, got {channels}")
        if clamp <= 0:
            raise ValueError(f"clamp must be positive, got {clamp}")
        self.passive_channels = channels // 2
        self.active_channels = channels - self.passive_channels
        self.clamp = float(clamp)
        self.subnet = subnet(self.passive_channels, 2 * self.active_channels)

    def _scale_shift(self, passive: Tensor) -> tuple[Tensor, Tensor]:
        # Cast back to the stream's dtype: under autocast the subnet may run in bf16, while the
        # coupled values and the log-det stay in the input's precision.
        s_raw, shift = self.subnet(passive).to(passive.dtype).chunk(2, dim=1)
        log_scale = self.clamp * torch.tanh(s_raw / self.clamp)
        return log_scale, shift

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        passive, active = x.split([self.passive_channels, self.active_channels], dim=1)
        log_scale, shift = self._scale_shift(passive)
        active = active * log_scale.exp() + shift
        return torch.cat([passive, active], dim=1), log_scale.flatten(1).sum(dim=1)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        passive, active = y.split([self.passive_channels, self.active_channels], dim=1)
        log_scale, shift = self._scale_shift(passive)
        active = (active - shift) * (-log_scale).exp()
        return torch.cat([passive, active], dim=1), -log_scale.flatten(1).sum(dim=1)
