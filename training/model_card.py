"""MODEL_CARD.md: the human-readable summary written next to every trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trustgc.artifact import ModelManifest

__all__ = ["write_model_card"]


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "n/a" if value is None else str(value)


def _epochs(training: dict[str, Any]) -> str:
    """Complete epochs, plus the passes over the data when a run stopped mid-epoch.

    A run stopped by a time budget has seen more data than its count of complete epochs says
    (605 steps of 214 per epoch, 256 images each, are 2.8 epochs, of which 2 complete).
    """
    complete = training.get("epochs_completed")
    batch = (training.get("config") or {}).get("batch_size")
    steps, size = training.get("steps"), training.get("train_size")
    if None in (complete, batch, steps, size) or not size:
        return f"{complete} epochs"
    steps_per_epoch = size // training.get("world_size", 1) // batch  # as the trainer counts
    if steps_per_epoch < 1:
        return f"{complete} epochs"
    seen = steps / steps_per_epoch
    if abs(seen - complete) < 0.05:
        return f"{complete} epochs"
    return f"{seen:.1f} epochs ({complete} complete)"


def write_model_card(directory: Path, manifest: ModelManifest, metrics: dict[str, Any]) -> None:
    training = manifest.training
    config = manifest.config
    lines = [
        f"# Model card: {manifest.name} (version {manifest.version})",
        "",
        f"- Kind: {config.kind}; {config.num_classes} classes: {', '.join(manifest.class_names)}",
        f"- Input: {config.input.channels}x{config.input.height}x{config.input.width}, pixels "
        f"scaled to [0, 1] by (k + 1/2) / 256, normalised with mean {config.input.mean} and "
        f"std {config.input.std}",
        f"- Data: `{training.get('dataset')}` train split minus a held-out calibration split of "
        f"{training.get('calibration_size')} images (seed {training.get('calibration_seed')}); "
        f"trained on {training.get('train_size')} images",
        f"- IB weight beta: {training.get('beta')}",
        f"- Training: {_epochs(training)}, {training.get('steps')} steps, "
        f"{training.get('training_seconds')} s on {training.get('hardware')} "
        f"(world size {training.get('world_size')}, torch {training.get('torch_version')})",
        f"- Command: `{training.get('command')}`",
        *(
            [
                f"- **Stopped early** by {training['stopped_early']} after "
                f"{training.get('epochs_completed')} of "
                f"{(training.get('config') or {}).get('epochs', 'n/a')} configured epochs "
                f"({training.get('steps')} steps)"
            ]
            if training.get("stopped_early")
            else []
        ),
        *([f"- Data location: `{training['data_dir']}`"] if training.get("data_dir") else []),
        "",
        "## Test metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {key} | {_format(value)} |" for key, value in metrics.items()],
        "",
    ]
    (directory / "MODEL_CARD.md").write_text("\n".join(lines))
