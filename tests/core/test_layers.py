"""Invertibility and exact log-determinants of every invertible layer and of whole networks.

Ground truth: the log|det| of the autograd Jacobian on tiny float64 inputs.  Parameters are
randomised away from the identity first (zero-initialised subnets would make every coupling
trivially exact).
"""

from __future__ import annotations

import math

import pytest
import torch

from trustgc.config import load_model_config
from trustgc.ibinn import IBINN, build_flow
from trustgc.layers import (
    ActNorm,
    AffineCoupling,
    ChannelPermutation,
    DCTPooling,
    HaarDownsampling,
    InputNormalization,
    InvertibleSequential,
    SpaceToDepth,
    dct_matrix,
    subnet_factory,
)


def _randomise(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(
                scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            )


LAYERS = {
    "actnorm": (lambda: ActNorm(3), (3, 4, 4)),
    "actnorm_flat": (lambda: ActNorm(6), (6,)),
    "input_normalization": (
        lambda: InputNormalization((0.2, 0.5, 0.7), (0.3, 0.9, 2.0)),
        (3, 2, 2),
    ),
    "coupling_conv": (lambda: AffineCoupling(4, subnet_factory("conv", 8), clamp=1.2), (4, 4, 4)),
    "coupling_odd": (lambda: AffineCoupling(3, subnet_factory("conv", 8)), (3, 2, 2)),
    "coupling_bottleneck": (lambda: AffineCoupling(4, subnet_factory("bottleneck", 8)), (4, 4, 4)),
    "coupling_mlp": (lambda: AffineCoupling(7, subnet_factory("mlp", 16)), (7,)),
    "permutation": (lambda: ChannelPermutation(5, seed=3), (5, 2, 2)),
    "haar": (lambda: HaarDownsampling(), (2, 4, 4)),
    "haar_rebalanced": (lambda: HaarDownsampling(rebalance=0.5), (2, 4, 4)),
    "space_to_depth": (lambda: SpaceToDepth(), (2, 4, 4)),
    "dct": (lambda: DCTPooling(3, 3, 4), (3, 3, 4)),
}


def _brute_force_logdet(layer, x: torch.Tensor) -> torch.Tensor:
    """log|det| of the full Jacobian of one sample, by autograd."""

    def flat_forward(flat):
        y, _ = layer(flat.reshape(1, *x.shape[1:]))
        return y.reshape(-1)

    jacobian = torch.autograd.functional.jacobian(flat_forward, x[0].reshape(-1))
    return torch.linalg.slogdet(jacobian)[1]


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_inverts_in_float64(name: str) -> None:
    build, shape = LAYERS[name]
    layer = build().double()
    _randomise(layer)
    x = torch.randn(5, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y, logdet = layer(x)
    x_back, inverse_logdet = layer.inverse(y)
    assert (x_back - x).abs().max().item() <= 1e-5 * 1e-5  # float64: far tighter than 1e-5
    assert torch.allclose(logdet, -inverse_logdet, rtol=0, atol=1e-10)
    assert logdet.shape == (5,)
    assert tuple(y.shape[1:]) == layer.output_shape(shape)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_inverts_in_float32(name: str) -> None:
    build, shape = LAYERS[name]
    layer = build()
    _randomise(layer)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(2))
    y, _ = layer(x)
    x_back, _ = layer.inverse(y)
    assert (x_back - x).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_logdet_matches_autograd_jacobian(name: str) -> None:
    build, shape = LAYERS[name]
    layer = build().double()
    _randomise(layer)
    x = torch.randn(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    _, logdet = layer(x)
    expected = _brute_force_logdet(layer, x)
    assert abs(logdet.item() - expected.item()) <= 1e-6 * max(1.0, abs(expected.item()))


def test_layer_logdet_is_nonzero_where_it_should_be() -> None:
    """Guard against a vacuous pass: randomised couplings and ActNorm change volume."""
    for name in ("actnorm", "coupling_conv", "haar_rebalanced", "input_normalization"):
        build, shape = LAYERS[name]
        layer = build().double()
        _randomise(layer)
        _, logdet = layer(torch.randn(1, *shape, dtype=torch.float64))
        assert abs(logdet.item()) > 1e-3, name


def _tiny_network():
    config = load_model_config("tiny")
    flow = build_flow(config).double()
    _randomise(flow, scale=0.1)
    return flow, config


def test_whole_network_inverts_and_matches_jacobian() -> None:
    flow, config = _tiny_network()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    z, logdet = flow(x)
    x_back, inverse_logdet = flow.inverse(z)
    assert z.shape == (3, config.input.dims)
    assert (x_back - x).abs().max().item() <= 1e-10
    assert torch.allclose(logdet, -inverse_logdet, atol=1e-9)
    expected = _brute_force_logdet(flow, x[:1])
    assert abs(logdet[0].item() - expected.item()) <= 1e-6 * abs(expected.item())


def test_whole_network_float32_inverts() -> None:
    model = IBINN(load_model_config("tiny"))
    _randomise(model, scale=0.1)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    z, _ = model(x)
    assert (model.inverse(z) - x).abs().max().item() <= 1e-4


def test_dct_is_orthonormal() -> None:
    for n in (1, 2, 7, 8):
        matrix = dct_matrix(n)
        assert torch.allclose(matrix @ matrix.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    pooling = DCTPooling(2, 3, 5).double()
    x = torch.randn(4, 2, 3, 5, dtype=torch.float64)
    y, _ = pooling(x)
    assert torch.allclose(y.norm(dim=1), x.flatten(1).norm(dim=1), atol=1e-12)


def test_dct_puts_channel_means_first() -> None:
    """The first C outputs are the DC coefficients: sqrt(H*W) times each channel's mean."""
    pooling = DCTPooling(3, 4, 4).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    y, _ = pooling(x)
    assert torch.allclose(y[:, :3], x.mean(dim=(2, 3)) * math.sqrt(16), atol=1e-12)


def test_haar_low_band_is_scaled_block_mean() -> None:
    x = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4)
    y, _ = HaarDownsampling()(x)
    blocks = torch.nn.functional.avg_pool2d(x, 2) * 2.0  # orthonormal: mean of 4 times 2
    assert torch.allclose(y[:, :1], blocks)


def test_sequential_names_the_failing_layer() -> None:
    chain = InvertibleSequential(ActNorm(2), DCTPooling(3, 2, 2))
    with pytest.raises(ValueError, match="DCTPooling expects"):
        chain(torch.zeros(1, 2, 2, 2))
    with pytest.raises(TypeError, match="layer 1"):
        InvertibleSequential(ActNorm(2), torch.nn.ReLU())


def test_coupling_starts_as_identity() -> None:
    layer = AffineCoupling(4, subnet_factory("conv", 8))
    x = torch.randn(2, 4, 3, 3)
    y, logdet = layer(x)
    assert torch.equal(y, x)
    assert torch.equal(logdet, torch.zeros(2))


def test_coupling_clamp_bounds_log_scale() -> None:
    layer = AffineCoupling(2, subnet_factory("mlp", 4), clamp=0.5)
    with torch.no_grad():
        layer.subnet[-1].bias.fill_(100.0)
    _, logdet = layer(torch.zeros(3, 2))
    assert torch.all(logdet <= 0.5) and torch.all(logdet > 0.49)
