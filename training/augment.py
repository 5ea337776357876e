"""Batched data augmentation on uint8 image tensors (no Python loop over images)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["random_crop", "random_hflip"]


def random_hflip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def random_crop(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad by ``padding`` and crop back to size at a random offset per image."""
    if padding == 0:
        return images
    batch, channels, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    offsets = torch.randint(
        0, 2 * padding + 1, (2, batch), generator=generator, device=images.device
    )
    rows = (torch.arange(height, device=images.device) + offsets[0, :, None])[:, :, None]
    cols = (torch.arange(width, device=images.device) + offsets[1, :, None])[:, None, :]
    index = torch.arange(batch, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[index, rows, cols]  # (B, H, W, C)
    return cropped.permute(0, 3, 1, 2).contiguous()
