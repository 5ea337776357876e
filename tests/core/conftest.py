"""Shared test data for the core: images built here, so the core's tests import only the core."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from trustgc.config import load_model_config
from trustgc.ibinn import IBINN


def blob_images(count: int, seed: int, noise_share: float = 0.0, size: int = 8) -> np.ndarray:
    """uint8 (N, 1, size, size), i.i.d. for a seed: a smooth blob of random place, width and
    brightness plus pixel noise; the first ``noise_share`` of the images are uniform noise.

    Draws with different seeds are exchangeable, which the p-value validity tests rely on.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"))
    centres = rng.uniform(1, size - 1, (count, 2, 1, 1))
    width = rng.uniform(size / 4, size, (count, 1, 1))
    blob = np.exp(-((grid[None] - centres) ** 2).sum(axis=1) / width)
    images = 255 * blob * rng.uniform(0.3, 1.0, (count, 1, 1)) + rng.normal(0, 10, blob.shape)
    noisy = int(round(noise_share * count))
    images[:noisy] = rng.uniform(0, 255, (noisy, size, size))
    return np.clip(images, 0, 255).astype(np.uint8)[:, None]


@pytest.fixture(scope="session")
def make_images() -> Callable[..., np.ndarray]:
    """:func:`blob_images`, as a fixture (conftest modules are not imported by tests)."""
    return blob_images


def randomised_tiny_flow(seed: int, num_classes: int | None = None, **overrides) -> IBINN:
    """The tiny IB-INN with every parameter moved away from its initialisation (seeded):
    zero-initialised subnets would make each coupling the identity, its statistics degenerate
    and parity checks vacuous.  ``num_classes`` (else the config's) and ``overrides`` go to the
    config.
    """
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    torch.manual_seed(seed)
    net = IBINN(load_model_config("tiny", **overrides)).eval()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return net


@pytest.fixture(scope="session")
def make_flow() -> Callable[..., IBINN]:
    """:func:`randomised_tiny_flow`, as a fixture (for models and background flows)."""
    return randomised_tiny_flow
