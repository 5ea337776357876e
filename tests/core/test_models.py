"""Every shipped config builds and runs; the ImageNet layout inverts; sampling; artifacts.

Forward passes run on the CPU in one thread: these networks are tiny per call, and on a busy
two-core machine a second BLAS/OpenMP thread makes them many times slower, not faster.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trustgc.artifact import (
    ArtifactError,
    ModelManifest,
    build_model,
    load_manifest,
    load_model,
    save_model,
)
from trustgc.classifier import CNNClassifier
from trustgc.config import ModelConfig, available_configs, load_model_config
from trustgc.ibinn import IBINN

SMALL_CONFIGS = [name for name in available_configs() if name != "imagenet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise(module: torch.nn.Module, scale: float, seed: int = 0) -> None:
    """Move parameters away from the identity initialisation (zero-init subnets, ActNorm)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def _images(config: ModelConfig, count: int, seed: int = 0) -> torch.Tensor:
    spec = config.input
    shape = (count, spec.channels, spec.height, spec.width)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _input_normalisation_logdet(config: ModelConfig) -> float:
    spec = config.input
    return -spec.height * spec.width * sum(math.log(s) for s in spec.std)


def test_shipped_configs_are_the_expected_ones() -> None:
    names = available_configs()
    assert {"tiny", "imagenet", "fashion_mnist", "cifar10", "fashion_mnist_dc"} <= set(names)
    assert "imagenet" not in SMALL_CONFIGS and len(SMALL_CONFIGS) == len(names) - 1


@pytest.mark.parametrize("name", SMALL_CONFIGS)
def test_shipped_config_builds_and_runs_forward(name: str) -> None:
    config = load_model_config(name)
    torch.manual_seed(0)
    model = build_model(config).eval()
    x = _images(config, 3)
    with torch.no_grad():
        if config.kind == "classifier":
            assert isinstance(model, CNNClassifier)
            logits = model(x)
            assert logits.shape == (3, config.num_classes)
            assert torch.isfinite(logits).all()
            return
        assert isinstance(model, IBINN)
        z, logdet = model(x)
        scores = model.score(x)
    dims = config.input.dims
    assert z.shape == (3, dims) and logdet.shape == (3,)
    assert scores.logits.shape == scores.log_posterior.shape == (3, config.num_classes)
    assert (
        scores.class_log_likelihood.shape
        == scores.squared_distances.shape
        == (3, config.num_classes)
    )
    assert scores.log_likelihood.shape == (3,) and scores.dim == dims
    assert torch.isfinite(z).all() and torch.isfinite(scores.log_likelihood).all()
    # At initialisation every coupling and ActNorm is the identity and Haar/DCT are orthonormal:
    # the flow is the input normalisation followed by a rotation.
    expected_logdet = _input_normalisation_logdet(config)
    assert torch.allclose(logdet, torch.full((3,), expected_logdet), rtol=1e-6)
    mean = torch.tensor(config.input.mean).view(1, -1, 1, 1)
    std = torch.tensor(config.input.std).view(1, -1, 1, 1)
    normalised_norm = ((x - mean) / std).flatten(1).norm(dim=1)
    assert torch.allclose(z.norm(dim=1), normalised_norm, rtol=1e-4)
    assert torch.allclose(scores.log_posterior.exp().sum(1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("name", [n for n in SMALL_CONFIGS if n != "fashion_mnist_dc"])
def test_shipped_ibinn_rejects_wrong_image_shape(name: str) -> None:
    config = load_model_config(name)
    model = build_model(config)
    spec = config.input
    with pytest.raises(ValueError, match="expected images of shape"):
        model(torch.zeros(1, spec.channels, spec.height + 2, spec.width))


# --------------------------------------------------------------------------- ImageNet layout

# Per coupling block on C channels (passive C // 2, active C - C // 2) with hidden width w:
#   bottleneck: 1x1 (C/2 -> w) + 3x3 (w -> w) + 1x1 (w -> 2 * active), biases, ActNorm 2C
#   conv:       3x3 (C/2 -> w) + 1x1 (w -> w) + 3x3 (w -> 2 * active), biases, ActNorm 2C
# Stages: conv 12@112 (w 32) x1, bottleneck 48@56 (64) x3, 192@28 (128) x4, 768@14 (256) x6,
# 3072@7 (512) x3 -> 20,383,956 network parameters.
# Class means: 1000 x 3072 full + 1000 x 128 coefficients + 128 x 147,456 basis, plus
# 1000 prior logits -> 22,075,368.
IMAGENET_NETWORK_PARAMETERS = 20_383_956
IMAGENET_HEAD_PARAMETERS = 22_075_368


def _bottleneck_block(channels: int, width: int) -> int:
    passive = channels // 2
    active = channels - passive
    subnet = passive * width + width + 9 * width * width + width + width * 2 * active + 2 * active
    return subnet + 2 * channels


def _conv_block(channels: int, width: int) -> int:
    passive = channels // 2
    active = channels - passive
    subnet = 9 * passive * width + width + width * width + width + 9 * width * 2 * active
    return subnet + 2 * active + 2 * channels


def test_imagenet_parameter_formula_matches_constant() -> None:
    """The hand formula above gives the pinned constants (guards the constants themselves)."""
    network = (
        _conv_block(12, 32)
        + 3 * _bottleneck_block(48, 64)
        + 4 * _bottleneck_block(192, 128)
        + 6 * _bottleneck_block(768, 256)
        + 3 * _bottleneck_block(3072, 512)
    )
    assert network == IMAGENET_NETWORK_PARAMETERS
    head = 1000 * 3072 + 1000 * 128 + 128 * (150_528 - 3072) + 1000
    assert head == IMAGENET_HEAD_PARAMETERS


def test_imagenet_forward_and_inverse_of_one_image() -> None:
    config = load_model_config("imagenet")
    torch.manual_seed(0)
    model = build_model(config).eval()
    assert isinstance(model, IBINN)
    network = sum(p.numel() for p in model.flow.parameters())
    head = sum(p.numel() for p in model.head.parameters())
    print(
        f"imagenet: {network:,} network parameters, {head:,} class-mean/prior parameters, "
        f"{network + head:,} in all"
    )
    assert network == IMAGENET_NETWORK_PARAMETERS
    assert head == IMAGENET_HEAD_PARAMETERS
    assert model.head.is_low_rank and model.head.full_dims == 3072
    # Small random perturbation so that no coupling is the identity (the inverse is then a real
    # test); 0.01 keeps 17 stacked blocks well conditioned in float32.
    _randomise(model.flow, scale=0.01)
    x = _images(config, 1)
    with torch.no_grad():
        z, logdet = model(x)
        x_back = model.inverse(z)
        distances = model.head.squared_distances(z)
    assert z.shape == (1, 150_528) and z.dtype == torch.float32
    assert logdet.shape == (1,) and torch.isfinite(logdet).all()
    assert torch.isfinite(z).all()
    # The couplings moved the log-det away from the input normalisation's alone.
    assert abs(logdet.item() - _input_normalisation_logdet(config)) > 1.0
    assert x_back.shape == x.shape
    error = (x_back - x).abs().max().item()
    assert error <= 1e-3, error
    assert distances.shape == (1, 1000) and torch.isfinite(distances).all()


# --------------------------------------------------------------------------- sampling


def _tiny_model(seed: int = 0) -> IBINN:
    torch.manual_seed(seed)
    model = IBINN(load_model_config("tiny"))
    _randomise(model.flow, scale=0.1, seed=seed)
    return model.eval()


def test_sample_shape_and_latent_round_trip() -> None:
    model = _tiny_model()
    torch.manual_seed(123)
    drawn = model.head.sample(2, 6, temperature=0.5).detach()
    torch.manual_seed(123)
    images = model.sample(2, 6, temperature=0.5)
    assert images.shape == (6, 1, 8, 8)
    assert not images.requires_grad
    with torch.no_grad():
        z, _ = model(images)
        scores = model.score(images)
    assert (z - drawn).abs().max().item() <= 1e-4
    # T = 0.5 around means 5 apart: ||z - mu_k||^2 - ||z - mu_2||^2 = 25 + 5 N(0, 1) > 0.
    assert torch.equal(scores.logits.argmax(1), torch.full((6,), 2))
    # Samples at temperature 0 are the inverse image of the class mean.
    mean_image = model.sample(1, 1, temperature=0.0)
    with torch.no_grad():
        z_mean, _ = model(mean_image)
    assert torch.allclose(z_mean[0], model.head.means()[1].detach(), atol=1e-4)


# --------------------------------------------------------------------------- artifacts


def _manifest(config: ModelConfig) -> ModelManifest:
    names = tuple(f"class_{k}" for k in range(config.num_classes))
    return ModelManifest(
        name=config.name, config=config, class_names=names, training={"dataset": "synthetic"}
    )


def test_artifact_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = _tiny_model(seed=1)
    with torch.no_grad():
        model.head.full_means.add_(0.3)
    config = model.config
    save_model(tmp_path / "artifact", model, _manifest(config))
    assert (tmp_path / "artifact" / "model.json").is_file()
    assert (tmp_path / "artifact" / "weights.safetensors").is_file()
    loaded, manifest = load_model(tmp_path / "artifact")
    assert manifest == _manifest(config)
    assert not loaded.training
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for key, value in original_state.items():
        assert loaded_state[key].dtype == value.dtype, key
        assert torch.equal(loaded_state[key], value), key
    x = _images(config, 5, seed=7)
    with torch.no_grad():
        expected, got = model.score(x), loaded.score(x)
    assert torch.equal(expected.log_posterior, got.log_posterior)
    assert torch.equal(expected.log_likelihood, got.log_likelihood)
    assert torch.equal(loaded.inverse(model(x)[0]), model.inverse(model(x)[0]))


def test_artifact_round_trip_of_cnn_baseline_keeps_batchnorm_statistics(tmp_path: Path) -> None:
    config = load_model_config("fashion_mnist_dc")
    torch.manual_seed(0)
    model = build_model(config)
    model.train()
    with torch.no_grad():
        model(_images(config, 4))  # updates BatchNorm running statistics
    model.eval()
    save_model(tmp_path, model, _manifest(config))
    loaded, _ = load_model(str(tmp_path))
    x = _images(config, 3, seed=2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    bn = next(m for m in loaded.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_load_model_rejects_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="model.json is missing"):
        load_model(tmp_path / "does-not-exist")
    with pytest.raises(ArtifactError, match="model.json is missing"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("url", ["https://example.com/model", "s3://bucket/model"])
def test_load_model_rejects_url(url: str) -> None:
    with pytest.raises(ArtifactError):
        load_model(url)


def test_load_model_rejects_url_even_if_a_local_lookalike_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Path("https://example.com/model") is "https:/example.com/model" relative to the cwd.
    lookalike = tmp_path / "https:" / "example.com" / "model"
    save_model(lookalike, _tiny_model(), _manifest(load_model_config("tiny")))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="local directories only"):
        load_model("https://example.com/model")


def test_load_model_rejects_missing_or_mismatched_weights(tmp_path: Path) -> None:
    tiny = load_model_config("tiny")
    save_model(tmp_path / "a", _tiny_model(), _manifest(tiny))
    (tmp_path / "a" / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="weights.safetensors is missing"):
        load_model(tmp_path / "a")
    # Weights of a different architecture under the tiny manifest.
    other = load_model_config("tiny", flat_blocks=2)
    save_model(tmp_path / "b", build_model(other), _manifest(other))
    (tmp_path / "b" / "model.json").write_text(
        (tmp_path / "b" / "model.json").read_text().replace('"flat_blocks": 2', '"flat_blocks": 1')
    )
    with pytest.raises(ArtifactError, match="does not match the config"):
        load_model(tmp_path / "b")


def test_save_model_rejects_wrong_number_of_class_names(tmp_path: Path) -> None:
    tiny = load_model_config("tiny")
    manifest = ModelManifest(name="tiny", config=tiny, class_names=("a", "b"))
    with pytest.raises(ArtifactError, match="2 class names for 4 classes"):
        save_model(tmp_path, _tiny_model(), manifest)
