"""choose_backend: onnxruntime only with a current export, torch otherwise, strict on request.

A tiny IB-INN artifact is exported once with the TorchScript exporter (the quicker one); the
cases copy it and break it the ways a deployment can: no export, weights retrained after the
export, a tampered model.onnx, a classifier artifact.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from trustgc.artifact import ArtifactError, ModelManifest, save_model
from trustgc.backend import choose_backend
from trustgc.config import load_model_config
from trustgc.onnx_backend import ONNX_FILE, export_artifact


def _save(directory: Path, model) -> None:
    manifest = ModelManifest(name="tiny", config=model.config, class_names=("a", "b", "c", "d"))
    save_model(directory, model, manifest)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, make_flow) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        directory = tmp_path_factory.mktemp("tiny")
        _save(directory, make_flow(0))
        export_artifact(directory, exporter="torchscript")
    finally:
        torch.set_num_threads(threads)
    return directory


@pytest.fixture
def copy(exported, tmp_path) -> Path:
    target = tmp_path / "artifact"
    shutil.copytree(exported, target)
    return target


def test_auto_picks_onnxruntime_for_a_current_export(exported) -> None:
    choice = choose_backend(exported)
    assert choice.backend == "onnxruntime"
    assert "SHA-256" in choice.reason
    assert choose_backend(exported, "onnxruntime").backend == "onnxruntime"


def test_torch_when_asked(exported) -> None:
    assert choose_backend(exported, "torch").backend == "torch"
    assert choose_backend(exported, " Torch ").backend == "torch"


def test_missing_export_falls_back_unless_onnxruntime_was_requested(copy) -> None:
    (copy / ONNX_FILE).unlink()
    choice = choose_backend(copy, "auto")
    assert choice.backend == "torch"
    assert ONNX_FILE in choice.reason and "export-onnx" in choice.reason
    with pytest.raises(ArtifactError, match="export-onnx"):
        choose_backend(copy, "onnxruntime")


def test_weights_retrained_after_the_export_fall_back(copy, make_flow) -> None:
    _save(copy, make_flow(1))  # new weights, old model.onnx and onnx.json
    choice = choose_backend(copy)
    assert choice.backend == "torch"
    assert "other weights" in choice.reason
    with pytest.raises(ArtifactError, match="other weights"):
        choose_backend(copy, "onnxruntime")


def test_a_tampered_export_falls_back(copy) -> None:
    path = copy / ONNX_FILE
    path.write_bytes(path.read_bytes() + b"\0")
    choice = choose_backend(copy)
    assert choice.backend == "torch"
    assert "checksum" in choice.reason


def test_a_classifier_runs_on_torch(tmp_path) -> None:
    from trustgc.classifier import CNNClassifier

    config = load_model_config("tiny").model_copy(update={"kind": "classifier"})
    _save(tmp_path, CNNClassifier(config))
    choice = choose_backend(tmp_path)
    assert choice.backend == "torch" and "classifier" in choice.reason
    with pytest.raises(ArtifactError, match="torch only"):
        choose_backend(tmp_path, "onnxruntime")


def test_unknown_request_is_an_error(exported) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend(exported, "tensorrt")
