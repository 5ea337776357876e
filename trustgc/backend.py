"""Which backend runs the network f for a served artifact: the one place that decides.

``auto`` (the served default) picks onnxruntime when the artifact holds a ``model.onnx`` that
was exported from its current weights (``checked_onnx_path`` verifies the SHA-256 recorded in
``onnx.json``) and onnxruntime imports; torch otherwise.  The reason is returned so that the
caller can say it in the log and export the choice as a metric label: an operator must be able
to see which backend answered and why, because a stale export silently falling back to torch
costs 2-3x throughput (docs/benchmarks.md) but never a wrong answer (parity tests).

An explicit ``onnxruntime`` request is strict: a missing or stale export is an error, never a
silent fallback.  A discriminative classifier (the CNN baseline) always runs on torch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from trustgc.artifact import ArtifactError, load_manifest

__all__ = ["BACKEND_REQUESTS", "BackendChoice", "choose_backend"]

BACKEND_REQUESTS = ("auto", "torch", "onnxruntime")


class BackendChoice(BaseModel):
    """The chosen backend and a one-line reason (for the log and the metric label)."""

    model_config = ConfigDict(frozen=True)

    backend: Literal["torch", "onnxruntime"]
    reason: str


def _onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def choose_backend(directory: Path | str, requested: str = "auto") -> BackendChoice:
    """Resolve ``requested`` (auto, torch or onnxruntime) for the artifact in ``directory``.

    Raises ``ValueError`` for an unknown request and ``ArtifactError`` when onnxruntime is
    requested explicitly but cannot be used.
    """
    from trustgc.onnx_backend import ONNX_FILE, checked_onnx_path

    requested = str(requested).strip().lower()
    if requested not in BACKEND_REQUESTS:
        raise ValueError(f"backend must be one of {BACKEND_REQUESTS}, got {requested!r}")
    directory = Path(directory)
    if requested == "torch":
        return BackendChoice(backend="torch", reason="torch requested")
    kind = load_manifest(directory).config.kind
    if kind != "ibinn":
        if requested == "onnxruntime":
            raise ArtifactError(f"a {kind!r} model runs on torch only, onnxruntime was requested")
        return BackendChoice(backend="torch", reason=f"a {kind!r} model runs on torch only")
    if not _onnxruntime_installed():
        if requested == "onnxruntime":
            raise ArtifactError("onnxruntime was requested but is not installed")
        return BackendChoice(backend="torch", reason="onnxruntime is not installed")
    try:
        checked_onnx_path(directory)
    except ArtifactError as error:
        if requested == "onnxruntime":
            raise
        return BackendChoice(backend="torch", reason=f"no usable {ONNX_FILE}: {error}")
    verb = "requested" if requested == "onnxruntime" else "auto"
    return BackendChoice(
        backend="onnxruntime", reason=f"{verb}: {ONNX_FILE} matches the weights' SHA-256"
    )
