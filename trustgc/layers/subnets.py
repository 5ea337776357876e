"""Subnetworks that predict a coupling's scale and shift (they need not be invertible).

Each constructor returns an ``nn.Module`` mapping ``in_channels`` to ``out_channels`` at the same
spatial size.  The last layer is zero-initialised so that every coupling starts as the identity,
which keeps deep stacks stable at the start of training.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["SubnetFactory", "bottleneck_subnet", "conv_subnet", "mlp_subnet", "subnet_factory"]

SubnetFactory = Callable[[int, int], nn.Module]


def _zero_init(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def conv_subnet(in_channels: int, out_channels: int, width: int, kernel: int = 3) -> nn.Module:
    """kxk conv -> ReLU -> 1x1 conv -> ReLU -> kxk conv (zero-init): a basic residual branch."""
    pad = kernel // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, width, kernel, padding=pad),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 1),
        nn.ReLU(inplace=True),
        _zero_init(nn.Conv2d(width, out_channels, kernel, padding=pad)),
    )


def bottleneck_subnet(in_channels: int, out_channels: int, width: int) -> nn.Module:
    """1x1 -> 3x3 -> 1x1 (zero-init): the ResNet-50 bottleneck used by the ImageNet layout."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(inplace=True),
        _zero_init(nn.Conv2d(width, out_channels, 1)),
    )


def mlp_subnet(in_features: int, out_features: int, width: int) -> nn.Module:
    """Linear -> ReLU -> Linear -> ReLU -> Linear (zero-init), for couplings on flat vectors."""
    return nn.Sequential(
        nn.Linear(in_features, width),
        nn.ReLU(inplace=True),
        nn.Linear(width, width),
        nn.ReLU(inplace=True),
        _zero_init(nn.Linear(width, out_features)),
    )


_KINDS = {"conv": conv_subnet, "bottleneck": bottleneck_subnet, "mlp": mlp_subnet}


def subnet_factory(kind: str, width: int) -> SubnetFactory:
    """A ``(in, out) -> module`` constructor for the named subnet kind and hidden width."""
    if kind not in _KINDS:
        raise ValueError(f"unknown subnet kind {kind!r}; known: {sorted(_KINDS)}")
    build = _KINDS[kind]
    return lambda in_channels, out_channels: build(in_channels, out_channels, width)
