"""A model artifact: one directory that holds everything needed to serve a trained model.

Layout::

    model.json          format version, model config, class names, training metadata
    weights.safetensors the state dict (parameters and buffers)
    metrics.json        test metrics written by ``trustgc evaluate`` / training
    calibration.json    reference score distributions (written by ``trustgc calibrate``)
    model.onnx          the exported flow, with onnx.json (``trustgc export-onnx``)
    MODEL_CARD.md       human-readable summary

Files derived from the weights (calibration, ONNX export) record the SHA-256 of the
``weights.safetensors`` they were made from; :func:`check_derived` refuses a mismatch, and
:func:`remove_derived` drops them when the weights are replaced, so a retrained model can never
be served with the p-values of its predecessor.

Weights are safetensors (no pickle): loading a model never executes code from the artifact.
Only local directories are accepted; there is no loading from URLs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from trustgc.config import ModelConfig

__all__ = [
    "ARTIFACT_FORMAT_VERSION",
    "DERIVED_FILES",
    "ArtifactError",
    "ModelManifest",
    "build_model",
    "check_derived",
    "file_sha256",
    "load_manifest",
    "load_model",
    "read_json",
    "remove_derived",
    "save_model",
    "weights_sha256",
    "write_json",
]

ARTIFACT_FORMAT_VERSION = 1
MANIFEST_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
#: Files made from the weights, each with the command that remakes it.  They are removed when
#: new weights are written (retraining into an existing directory).
DERIVED_FILES: dict[str, str] = {
    "calibration.json": "trustgc calibrate",
    "model.onnx": "trustgc export-onnx",
    "onnx.json": "trustgc export-onnx",
}


class ArtifactError(ValueError):
    """The directory is not a valid model artifact (the message says what is wrong)."""


class ModelManifest(BaseModel):
    """``model.json``: what a model is, independent of its weights."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = ARTIFACT_FORMAT_VERSION
    name: str
    version: str = "1"
    config: ModelConfig
    class_names: tuple[str, ...]
    training: dict[str, Any] = Field(default_factory=dict)


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the network a config describes (weights freshly initialised)."""
    if config.kind == "ibinn":
        from trustgc.ibinn import IBINN

        return IBINN(config)
    from trustgc.classifier import CNNClassifier

    return CNNClassifier(config)


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (write a temp file, then rename) so readers never see half a file."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    temporary.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB chunks: the one hash of the project."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(directory: Path | str) -> str:
    """SHA-256 of the artifact's ``weights.safetensors``."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise ArtifactError(f"{directory}: {WEIGHTS_FILE} is missing")
    return file_sha256(path)


def check_derived(directory: Path | str, file_name: str, recorded: str | None) -> None:
    """Refuse a derived file whose recorded weights hash is not the current weights'.

    The message names the command that remakes the file, so a stale artifact is one command
    away from a valid one.
    """
    directory = Path(directory)
    command = f"`{DERIVED_FILES[file_name]} --model {directory}`"
    if recorded is None:
        raise ArtifactError(
            f"{directory / file_name} does not record which weights it was made from: "
            f"run {command} again"
        )
    if recorded != weights_sha256(directory):
        raise ArtifactError(
            f"{directory / file_name} was made from other weights than "
            f"{directory / WEIGHTS_FILE} (retrained since?): run {command} again"
        )


def remove_derived(directory: Path | str) -> list[str]:
    """Delete the files made from the old weights; returns the names removed."""
    removed = []
    for name in DERIVED_FILES:
        path = Path(directory) / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    return removed


def save_model(directory: Path, model: nn.Module, manifest: ModelManifest) -> None:
    """Write weights and manifest into ``directory`` (created if needed).

    Files derived from earlier weights are left alone here (their recorded hash no longer
    matches, so they are refused on load); the trainer removes them with :func:`remove_derived`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if len(manifest.class_names) != manifest.config.num_classes:
        raise ArtifactError(
            f"{len(manifest.class_names)} class names for {manifest.config.num_classes} classes"
        )
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    write_json(directory / MANIFEST_FILE, manifest.model_dump(mode="json"))


def load_manifest(directory: Path) -> ModelManifest:
    """Read and validate ``model.json``."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a model artifact: {MANIFEST_FILE} is missing")
    manifest = ModelManifest.model_validate(read_json(path))
    if manifest.format_version != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format version {manifest.format_version}, this code reads "
            f"{ARTIFACT_FORMAT_VERSION}"
        )
    return manifest


def load_model(
    directory: Path | str, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelManifest]:
    """Rebuild the network from ``directory`` and load its weights (eval mode)."""
    if "://" in str(directory):  # check the raw string: Path() would fold "//" into "/"
        raise ArtifactError(f"models load from local directories only, got {directory}")
    directory = Path(directory)
    manifest = load_manifest(directory)
    model = build_model(manifest.config)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{directory}: {WEIGHTS_FILE} is missing")
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(
            f"{weights} does not match the config: missing {missing}, unexpected {unexpected}"
        )
    return model.to(device).eval(), manifest
