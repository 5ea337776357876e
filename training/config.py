"""The typed ``training`` section of a config file (see ``trustgc/configs/*.json``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trustgc.config import load_config_file

__all__ = ["AdversarialConfig", "TrainingConfig", "load_training_config"]


class AdversarialConfig(BaseModel):
    """PGD-L2 adversarial training inside the IB objective (training/adversarial.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epsilon: float = Field(gt=0, description="L2 radius in [0, 1] pixel units")
    steps: int = Field(default=5, ge=1, description="PGD steps per batch")
    step_size: float | None = Field(
        default=None, gt=0, description="PGD step length (default 2.5 * epsilon / steps)"
    )
    adversarial_weight: float = Field(
        default=0.5, ge=0, le=1, description="share of L_Y computed on the adversarial inputs"
    )

    def resolved_step_size(self) -> float:
        """Madry et al.'s 2.5 * eps / steps unless set: the walk can reach the far side of
        the ball from a random start."""
        return self.step_size if self.step_size is not None else 2.5 * self.epsilon / self.steps


class TrainingConfig(BaseModel):
    """Optimisation, loss and data settings of one training run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_epochs: float = Field(default=1.0, ge=0)
    grad_clip: float = Field(default=8.0, gt=0)
    beta: float = Field(default=8.0, ge=0, description="IB weight; inf = cross-entropy only")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    dequantization_noise: float = Field(default=0.01, ge=0, description="Gaussian sigma")
    calibration_size: int = Field(default=5000, ge=0)
    augment_hflip: bool = False
    augment_crop_padding: int = Field(default=0, ge=0)
    seed: int = 0
    amp: bool = False
    limit_train_samples: int | None = Field(default=None, gt=0)
    adversarial: AdversarialConfig | None = Field(
        default=None, description="adversarial training (None: clean training)"
    )
    # Image folders ("folder" data sets, see training.folder_config): how the files are read,
    # recorded so that calibration and evaluation read exactly the pixels training saw.
    image_size: tuple[int, int] | None = Field(
        default=None, description="(height, width) every image is resized to"
    )
    channels: Literal[1, 3] | None = Field(default=None, description="None: detect")
    test_fraction: float = Field(
        default=0.0, ge=0, lt=1, description="seeded test split of a folder without test/"
    )

    @field_validator("beta", mode="before")
    @classmethod
    def _parse_infinity(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in {"inf", "infinity"}:
            return math.inf
        return value


def load_training_config(name_or_path: str | Path, **overrides: Any) -> TrainingConfig:
    """The validated ``training`` section of a config, with fields overridden."""
    data = load_config_file(name_or_path)
    raw = data.get("training") if isinstance(data, dict) else None
    if not isinstance(raw, dict):
        raise ValueError(
            f"config {name_or_path} has no 'training' section: add one (see "
            "trustgc/configs/fashion_mnist.json), or train an image folder with --data-dir alone"
        )
    given = {key: value for key, value in overrides.items() if value is not None}
    return TrainingConfig.model_validate({**raw, **given})
