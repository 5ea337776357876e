"""Typed architecture configs, read from the JSON files in ``trustgc/configs/``.

A config file holds two sections: ``model`` (read here; everything needed to rebuild the
network) and ``training`` (read by the training subproject).  The resolved model config is saved
inside every model artifact, so a model is rebuilt from its own directory, never from defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "CONFIG_DIR",
    "InputSpec",
    "ModelConfig",
    "StageConfig",
    "available_configs",
    "load_config_file",
    "load_model_config",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSpec(_Frozen):
    """What the network expects: image size, channels and the per-channel normalisation.

    Pixels are scaled to [0, 1] first; ``mean``/``std`` then normalise each channel.
    """

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[1, 3]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @model_validator(mode="after")
    def _one_value_per_channel(self) -> InputSpec:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean and std need {self.channels} values each, got {len(self.mean)} and "
                f"{len(self.std)}"
            )
        return self

    @property
    def dims(self) -> int:
        """Number of dimensions D of one image."""
        return self.height * self.width * self.channels


class StageConfig(_Frozen):
    """One resolution level: a 2x downsampling (unless ``none``), then ``blocks`` couplings.

    ``haar`` is the orthonormal wavelet; ``coupling`` is space-to-depth followed by a coupling
    on each half (the authors' downsampling coupling).
    """

    blocks: int = Field(ge=0)
    width: int = Field(gt=0, description="hidden width of each coupling's subnet")
    subnet: Literal["conv", "bottleneck"] = "conv"
    downsample: Literal["haar", "coupling", "none"] = "haar"


class ModelConfig(_Frozen):
    """An IB-INN (``kind='ibinn'``) or the discriminative CNN baseline (``kind='classifier'``)."""

    name: str
    kind: Literal["ibinn", "classifier"] = "ibinn"
    input: InputSpec
    num_classes: int = Field(ge=2)
    stages: tuple[StageConfig, ...]
    clamp: float = Field(default=1.5, gt=0, description="soft clamp c of the coupling log-scale")
    actnorm: bool = True
    flat_blocks: int = Field(default=0, ge=0, description="fully connected couplings after DCT")
    flat_width: int = Field(default=256, gt=0)
    mean_init_distance: float = Field(default=5.0, gt=0)
    mean_full_dims: int | None = Field(
        default=None, description="dims with full class means; the rest are low rank (None: all)"
    )
    mean_rank: int = Field(default=128, gt=0)
    learn_prior: bool = False
    permutation_seed: int = 0

    @property
    def downsampling_factor(self) -> int:
        """Total spatial reduction of the stages (2 per downsampling stage)."""
        return 2 ** sum(stage.downsample != "none" for stage in self.stages)

    @model_validator(mode="after")
    def _check_layout(self) -> ModelConfig:
        factor = self.downsampling_factor
        if self.input.height % factor or self.input.width % factor:
            raise ValueError(
                f"the stages downsample by {factor}, which needs height and width divisible by "
                f"it, got {self.input.height}x{self.input.width}"
            )
        full = self.mean_full_dims
        if full is not None and not self.num_classes <= full <= self.input.dims:
            raise ValueError(
                f"mean_full_dims must lie in [num_classes={self.num_classes}, "
                f"D={self.input.dims}], got {full}"
            )
        return self

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the last feature map, before DCT pooling."""
        factor = self.downsampling_factor
        return (
            self.input.channels * factor * factor,
            self.input.height // factor,
            self.input.width // factor,
        )


def available_configs() -> list[str]:
    """Names of the configs shipped in ``trustgc/configs/``."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json"))


def load_config_file(name_or_path: str | Path) -> dict[str, Any]:
    """Raw JSON of a shipped config (by name) or of a config file (by path)."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = CONFIG_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise ValueError(f"unknown config {name_or_path!r}; known: {available_configs()}")
    return json.loads(path.read_text())


def load_model_config(name_or_path: str | Path, **overrides: Any) -> ModelConfig:
    """The validated ``model`` section of a config, with top-level fields overridden."""
    raw = load_config_file(name_or_path)["model"]
    return ModelConfig.model_validate({**raw, **overrides})
