"""The artifact's background flow: a model of generic images for the likelihood-ratio test.

A Fashion-MNIST flow's likelihood is dominated by local pixel statistics that every natural
image shares, so a photo can be about as likely as a garment (Schirrmeister et al., NeurIPS
2020).  A second, smaller flow trained on generic images (CIFAR-10 *train* photos as the server
decodes them, plus synthetic noise; recipe in training/background.py) models those shared
statistics; the statistic ``background_ratio`` (trustgc/trust/statistics.py) is
``(log q(x) - log q_bg(x)) / D``, and photos, which the background explains better than the
in-distribution model does, land in its lower tail.

Layout: ``<artifact>/background/`` is an artifact of its own (``model.json`` +
``weights.safetensors``), loaded with the classifier.  An artifact without that folder has no
background; its calibration then holds no ratio statistic and serves the OoD combination
without it.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from trustgc.artifact import MANIFEST_FILE, ModelManifest, load_model, weights_sha256

__all__ = [
    "BACKGROUND_DIR",
    "background_dir",
    "check_background_weights",
    "load_background",
    "onnx_background",
]

BACKGROUND_DIR = "background"


def background_dir(directory: Path | str) -> Path | None:
    """The artifact's background folder, or None if it has none."""
    path = Path(directory) / BACKGROUND_DIR
    return path if (path / MANIFEST_FILE).is_file() else None


def load_background(
    directory: Path | str, input_spec, device: str = "cpu"
) -> tuple[nn.Module, ModelManifest] | None:
    """The artifact's background flow (eval mode) and manifest, or None without one.

    Refuses a background whose input differs from the classifier's ``input_spec``: the ratio
    compares two densities of the same pixels.
    """
    path = background_dir(directory)
    if path is None:
        return None
    model, manifest = load_model(path, device)
    if manifest.config.kind != "ibinn":
        raise ValueError(f"{path}: a background must be a flow (kind ibinn)")
    spec = manifest.config.input
    if (spec.channels, spec.height, spec.width) != (
        input_spec.channels,
        input_spec.height,
        input_spec.width,
    ):
        raise ValueError(
            f"{path}: background input {spec.channels}x{spec.height}x{spec.width} differs from "
            f"the model's {input_spec.channels}x{input_spec.height}x{input_spec.width}"
        )
    return model.eval(), manifest


def check_background_weights(directory: Path | str, recorded: str | None) -> None:
    """Refuse a calibration fitted with other background weights than the artifact's.

    ``recorded`` is the hash the calibration stored (``split['background_weights_sha256']``);
    None with no background folder is consistent, anything else must match.
    """
    path = background_dir(directory)
    current = None if path is None else weights_sha256(path)
    if current != recorded:
        raise ValueError(
            f"{directory}: the calibration was fitted with background weights {recorded}, the "
            f"artifact has {current}: run `trustgc calibrate --model {directory}` again"
        )


def onnx_background(directory: Path | str, background: nn.Module, threads: int = 1):
    """The background flow run by ONNX Runtime when its folder holds a checked ``model.onnx``
    (``trustgc export-onnx --model <artifact>/background``), else None (it then runs in torch).

    With the served backend ``onnxruntime`` this keeps the second forward pass as cheap as the
    first: torch eager spends most of the small flow's time on per-op overhead.
    """
    path = background_dir(directory)
    if path is None or not (path / "model.onnx").is_file():
        return None
    from trustgc.onnx_backend import OnnxFlow

    return OnnxFlow.from_artifact(path, head=background.head, threads=threads)
