"""Invertible replacements for pooling: Haar wavelet and space-to-depth downsampling, DCT pooling.

All three are orthonormal (log-det 0 unless the Haar rebalance factor is set), so they keep
distances: the posterior heatmaps rely on ||z - mu|| being the same before and after the DCT.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trustgc.layers.base import InvertibleLayer

__all__ = ["DCTPooling", "HaarDownsampling", "SpaceToDepth", "dct_matrix", "full_precision"]


def full_precision(x: Tensor):
    """Disable autocast: orthonormal transforms run in the stream's dtype (fp32 under AMP), so
    the invertible stream and its log-det never drop to bf16."""
    return torch.autocast(x.device.type, enabled=False)


def _check_even(x: Tensor, name: str) -> None:
    if x.dim() != 4 or x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"{name} needs (B, C, H, W) with even H and W, got {tuple(x.shape)}")


def _blocks(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, 4, H/2, W/2): the four pixels of each 2x2 block, raster order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c, 4, h // 2, w // 2)


def _unblocks(x: Tensor) -> Tensor:
    """Inverse of :func:`_blocks`."""
    b, c, _, h, w = x.shape
    x = x.reshape(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c, 2 * h, 2 * w)


class SpaceToDepth(InvertibleLayer):
    """(C, H, W) -> (4C, H/2, W/2) by moving each 2x2 block into channels (log-det 0)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_even(x, "SpaceToDepth")
        b, c, h, w = x.shape
        return _blocks(x).reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        b, c4, h, w = y.shape
        return _unblocks(y.reshape(b, c4 // 4, 4, h, w)), y.new_zeros(b)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = input_shape
        return (4 * c, h // 2, w // 2)


class HaarDownsampling(InvertibleLayer):
    """Orthonormal 2x2 Haar transform: (C, H, W) -> (4C, H/2, W/2), channels grouped by band.

    Output channels are [LL of all C, LH of all C, HL of all C, HH of all C], so the low-pass
    band comes first.  Optional rebalance factor r scales the output: log-det = D * log r.
    """

    def __init__(self, rebalance: float = 1.0) -> None:
        super().__init__()
        if rebalance <= 0:
            raise ValueError(f"rebalance must be positive, got {rebalance}")
        self.rebalance = float(rebalance)
        hadamard = torch.tensor(
            [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float32
        )
        self.register_buffer("bands", hadamard / 2.0)  # symmetric and orthogonal: its own inverse

    def _logdet(self, x: Tensor, sign: float) -> Tensor:
        return x.new_full((x.shape[0],), sign * x[0].numel() * math.log(self.rebalance))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_even(x, "HaarDownsampling")
        with full_precision(x):
            bands = torch.einsum("fp,bcphw->bfchw", self.bands.to(x.dtype), _blocks(x))
        b, _, c, h, w = bands.shape
        y = bands.reshape(b, 4 * c, h, w) * self.rebalance
        return y, self._logdet(x, 1.0)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        b, c4, h, w = y.shape
        bands = y.reshape(b, 4, c4 // 4, h, w) / self.rebalance
        with full_precision(y):
            x = _unblocks(torch.einsum("fp,bfchw->bcphw", self.bands.to(y.dtype), bands))
        return x, self._logdet(y, -1.0)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = input_shape
        return (4 * c, h // 2, w // 2)


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Orthonormal DCT-II matrix A (n x n): A[k, i] = a_k cos(pi (2i + 1) k / 2n).

    a_0 = sqrt(1/n), a_k = sqrt(2/n) otherwise, so A @ A.T = I.
    """
    i = torch.arange(n, dtype=torch.float64)
    k = i[:, None]
    matrix = torch.cos(math.pi * (2 * i[None, :] + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] = math.sqrt(1.0 / n)
    return matrix.to(dtype)


class DCTPooling(InvertibleLayer):
    """Orthonormal 2D DCT-II of each channel's H x W map, flattened frequency-major.

    Output index = frequency * C + channel with frequencies in raster order, so the first C
    entries are the channels' DC coefficients (the paper's "global average pooling" part).
    """

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.channels, self.height, self.width = channels, height, width
        self.register_buffer("dct_h", dct_matrix(height))  # float64: exact in any dtype
        self.register_buffer("dct_w", dct_matrix(width))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if tuple(x.shape[1:]) != (self.channels, self.height, self.width):
            raise ValueError(
                f"DCTPooling expects (B, {self.channels}, {self.height}, {self.width}), "
                f"got {tuple(x.shape)}"
            )
        a_h, a_w = self.dct_h.to(x.dtype), self.dct_w.to(x.dtype)
        with full_precision(x):
            coefficients = torch.einsum("uh,bchw,vw->buvc", a_h, x, a_w)
        return coefficients.reshape(x.shape[0], -1), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        a_h, a_w = self.dct_h.to(y.dtype), self.dct_w.to(y.dtype)
        coefficients = y.reshape(y.shape[0], self.height, self.width, self.channels)
        with full_precision(y):
            x = torch.einsum("uh,buvc,vw->bchw", a_h, coefficients, a_w)
        return x, y.new_zeros(y.shape[0])

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.channels * self.height * self.width,)
