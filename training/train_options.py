"""``trustgc train``'s options: one model for the command line, the tests and :func:`train`.

Kept free of torch (like :mod:`training.attack_options`) so that building the ``trustgc`` parser
stays fast; the flags of ``trustgc train`` are generated from these fields
(:func:`trustgc_cli.options.add_options`), so a new option is one field here.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TrainOptions"]


def _command_line() -> str:
    return shlex.join(["trustgc", *sys.argv[1:]])


class TrainOptions(BaseModel):
    """Run-level options; the config's fields that are set here override the config.

    Range checks of the config's fields stay with :class:`training.config.TrainingConfig`
    (one source); only ``beta`` is checked here too, since ``inf`` is a meaningful value that
    the command line must accept and ``nan`` is not.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: str | None = Field(
        None,
        description="config name or JSON path (default: inferred when --data-dir is a folder "
        "of class sub-folders, else fashion_mnist)",
    )
    out: Path = Field(description="model artifact directory")
    beta: float | None = Field(None, ge=0, description="IB weight (inf: cross-entropy only)")
    epochs: int | None = Field(None, description="training epochs (default: the config's)")
    batch_size: int | None = Field(None, description="batch size (default: the config's)")
    lr: float | None = Field(None, description="peak learning rate (default: the config's)")
    seed: int | None = Field(None, description="random seed (default: the config's)")
    amp: bool | None = Field(None, description="bf16 autocast")
    limit_train_samples: int | None = Field(
        None, description="train on the first N training images only"
    )
    data_dir: Path | None = Field(
        None,
        description="data set directory (default per set); a folder of class sub-folders (or "
        "train/ and test/ holding them) is trained on without a config",
    )
    preset: str | None = Field(
        None, description="architecture for an image folder: tiny, small (default) or medium"
    )
    image_size: int | None = Field(
        None, gt=0, description="resize an image folder's images to N x N (default: inferred)"
    )
    init_weights: Path | None = Field(
        None,
        description="start from this model artifact's weights (fine-tuning; the architecture "
        "must be the config's)",
    )
    device: str = Field("auto", description="auto, cpu or cuda")
    resume: bool = Field(False, description="continue from the checkpoint")
    time_budget_minutes: float | None = Field(
        None, description="finish the LR schedule within this wall time (single process)"
    )
    max_steps: int | None = Field(None, description="stop after this many steps")
    evaluate: bool = Field(True, description="evaluate the trained model on the test split")
    progress: bool = Field(True, description="show progress bars")
    command: str = Field(
        default_factory=_command_line, description="the command line, recorded in the artifact"
    )
