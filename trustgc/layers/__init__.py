"""Invertible layers: each returns its output and the per-sample log-determinant."""

from trustgc.layers.base import InvertibleLayer, InvertibleSequential
from trustgc.layers.coupling import AffineCoupling
from trustgc.layers.elementwise import ActNorm, InputNormalization
from trustgc.layers.permutation import ChannelPermutation
from trustgc.layers.resampling import DCTPooling, HaarDownsampling, SpaceToDepth, dct_matrix
from trustgc.layers.subnets import bottleneck_subnet, conv_subnet, mlp_subnet, subnet_factory

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "ChannelPermutation",
    "DCTPooling",
    "HaarDownsampling",
    "InputNormalization",
    "InvertibleLayer",
    "InvertibleSequential",
    "SpaceToDepth",
    "bottleneck_subnet",
    "conv_subnet",
    "dct_matrix",
    "mlp_subnet",
    "subnet_factory",
]
