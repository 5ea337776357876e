"""The IB-INN: an invertible network f followed by the Gaussian mixture head.

Layout (paper Table 1, generalised by :class:`~trustgc.config.ModelConfig`)::

    input normalisation
    for each stage: downsample (Haar / coupling / none), then blocks of
        [affine coupling, ActNorm, fixed channel permutation]
    DCT pooling of the last feature map to a D-dimensional vector
    optional fully connected coupling blocks on that vector
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trustgc.config import ModelConfig, StageConfig
from trustgc.head import GaussianMixtureHead
from trustgc.layers import (
    ActNorm,
    AffineCoupling,
    ChannelPermutation,
    DCTPooling,
    HaarDownsampling,
    InputNormalization,
    InvertibleLayer,
    InvertibleSequential,
    SpaceToDepth,
    subnet_factory,
)
from trustgc.scoring import LatentScores, score_latents

__all__ = ["IBINN", "build_flow"]


class _Seeds:
    """Hands out distinct, reproducible seeds for the fixed permutations."""

    def __init__(self, base: int) -> None:
        self._next = base * 1000

    def __call__(self) -> int:
        self._next += 1
        return self._next


def _coupling_block(channels: int, subnet, config: ModelConfig, seeds: _Seeds) -> list:
    layers: list[InvertibleLayer] = [AffineCoupling(channels, subnet, config.clamp)]
    if config.actnorm:
        layers.append(ActNorm(channels))
    layers.append(ChannelPermutation(channels, seeds()))
    return layers


def _stage(channels: int, stage: StageConfig, config: ModelConfig, seeds: _Seeds):
    """Layers of one stage and the channel count after it."""
    layers: list[InvertibleLayer] = []
    subnet = subnet_factory(stage.subnet, stage.width)
    if stage.downsample == "haar":
        layers.append(HaarDownsampling())
        channels *= 4
    elif stage.downsample == "coupling":
        # Space-to-depth, then one coupling per half so that every channel gets transformed.
        channels *= 4
        layers.append(SpaceToDepth())
        layers += _coupling_block(channels, subnet, config, seeds)
        layers += _coupling_block(channels, subnet, config, seeds)
    for _ in range(stage.blocks):
        layers += _coupling_block(channels, subnet, config, seeds)
    return layers, channels


def build_flow(config: ModelConfig) -> InvertibleSequential:
    """The invertible network f described by ``config``, input normalisation first."""
    seeds = _Seeds(config.permutation_seed)
    layers: list[InvertibleLayer] = [InputNormalization(config.input.mean, config.input.std)]
    channels = config.input.channels
    for stage in config.stages:
        stage_layers, channels = _stage(channels, stage, config, seeds)
        layers += stage_layers
    latent_channels, height, width = config.latent_shape
    assert channels == latent_channels, (channels, latent_channels)
    layers.append(DCTPooling(channels, height, width))
    flat = subnet_factory("mlp", config.flat_width)
    for _ in range(config.flat_blocks):
        layers += _coupling_block(config.input.dims, flat, config, seeds)
    return InvertibleSequential(*layers)


class IBINN(nn.Module):
    """Generative classifier: ``flow`` maps images to latents, ``head`` scores them."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.kind != "ibinn":
            raise ValueError(f"IBINN needs a config of kind 'ibinn', got {config.kind!r}")
        self.config = config
        self.flow = build_flow(config)
        self.head = GaussianMixtureHead(
            num_classes=config.num_classes,
            dim=config.input.dims,
            init_distance=config.mean_init_distance,
            full_dims=config.mean_full_dims,
            rank=config.mean_rank,
            learn_prior=config.learn_prior,
        )

    @property
    def dim(self) -> int:
        return self.config.input.dims

    def _check_images(self, x: Tensor) -> None:
        spec = self.config.input
        expected = (spec.channels, spec.height, spec.width)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected images of shape (B, {expected}), got {tuple(x.shape)}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images in [0, 1], (B, C, H, W) -> latents (B, D) and log|det J_f| (B,)."""
        self._check_images(x)
        return self.flow(x)

    def inverse(self, z: Tensor) -> Tensor:
        """Latents (B, D) -> images in [0, 1] scale (not clipped)."""
        x, _ = self.flow.inverse(z)
        return x

    def score(self, x: Tensor) -> LatentScores:
        """Run the flow and score the latents: posteriors, likelihoods, bits/dim."""
        z, logdet = self(x)
        return score_latents(z, logdet, self.head, inputs=x)

    @torch.no_grad()
    def sample(self, class_index: int, count: int, temperature: float = 1.0) -> Tensor:
        """Images drawn from q(x | y = class_index) by inverting the flow."""
        return self.inverse(self.head.sample(class_index, count, temperature))
