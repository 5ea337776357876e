"""Training checkpoints: everything needed to continue a run exactly where it stopped.

Checkpoints are written at epoch boundaries only (the data order and augmentation noise of an
epoch are derived from (seed, epoch), so a resumed run replays the same batches).  A write goes
to a temp file first and is renamed: a crash never leaves a half-written "last good" checkpoint.
Checkpoints are internal files (``.gitignore``d); the shipped model is a safetensors artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_NAME", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "last.pt"


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_NAME
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)
    return path


def load_checkpoint(directory: Path, device: torch.device) -> dict[str, Any] | None:
    """The last checkpoint in ``directory``, or None if there is none."""
    path = directory / CHECKPOINT_NAME
    if not path.is_file():
        return None
    return torch.load(path, map_location=device, weights_only=True)
