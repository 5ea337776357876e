"""Turning 8-bit pixels into the network's [0, 1] input: one definition for training and serving.

Training dequantises: x = (k + u) / 256 with u ~ U(0, 1) plus small Gaussian noise, so the flow
models a continuous density.  Evaluation and serving use the centre of each dequantisation bin,
x = (k + 1/2) / 256, so that the same image always gives the same answer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["dequantize", "pixels_to_tensor", "pixels_to_unit"]


def pixels_to_unit(pixels: Tensor) -> Tensor:
    """uint8 pixels (B, C, H, W) -> float32 bin centres (k + 1/2) / 256 in (0, 1)."""
    if pixels.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    return (pixels.float() + 0.5) / 256.0


def dequantize(
    pixels: Tensor, noise_std: float, generator: torch.Generator | None = None
) -> Tensor:
    """Training input: (k + u) / 256 + N(0, noise_std^2), u ~ U(0, 1), for uint8 pixels."""
    if pixels.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    uniform = torch.rand(pixels.shape, generator=generator, device=pixels.device)
    x = (pixels.float() + uniform) / 256.0
    if noise_std > 0:
        x = x + noise_std * torch.randn(pixels.shape, generator=generator, device=pixels.device)
    return x


def pixels_to_tensor(images: np.ndarray) -> Tensor:
    """uint8 array (N, H, W, C), channels last as stored -> uint8 tensor (N, C, H, W)."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
