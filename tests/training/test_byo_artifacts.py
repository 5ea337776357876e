"""Artifacts that cannot go stale: calibration and ONNX export are tied to the weights' hash.

A retrained model served with its predecessor's references would answer with p-values that
mean nothing; these tests retrain (new weights) under an old calibration and check that every
loader refuses it with the command that fixes it, and that the trainer removes the old files.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.archive import build_archive
from training.calibrate import dataset_statistics
from training.data import make_synthetic
from training.trainer import TrainOptions, train
from trustgc.artifact import (
    WEIGHTS_FILE,
    ArtifactError,
    ModelManifest,
    build_model,
    file_sha256,
    load_model,
    save_model,
    weights_sha256,
)
from trustgc.config import load_model_config
from trustgc.trust.calibration import (
    CALIBRATION_FILE,
    check_resolution,
    fit_calibration,
    load_calibration,
    save_calibration,
)
from trustgc.trust.predictor import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")


def _save_tiny(directory: Path, seed: int) -> None:
    torch.manual_seed(seed)
    config = load_model_config("tiny")
    manifest = ModelManifest(name="tiny", config=config, class_names=("a", "b", "c", "d"))
    save_model(directory, build_model(config), manifest)


def _calibrate(directory: Path, images: int = 160, alpha: float = 0.05) -> None:
    model, _ = load_model(directory)
    statistics = dataset_statistics(model, make_synthetic(images // 4, seed=3).images)
    half = images // 4
    part_a = {name: values[:half] for name, values in statistics.items()}
    part_b = {name: values[half:] for name, values in statistics.items()}
    save_calibration(directory, fit_calibration(part_a, part_b, alpha, alpha))


@pytest.fixture
def artifact(tmp_path) -> Path:
    directory = tmp_path / "tiny"
    _save_tiny(directory, seed=0)
    _calibrate(directory)
    return directory


def test_one_hash_for_every_artifact_file(artifact) -> None:
    import hashlib

    weights = artifact / WEIGHTS_FILE
    assert file_sha256(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert weights_sha256(artifact) == file_sha256(weights)
    recorded = json.loads((artifact / CALIBRATION_FILE).read_text())["weights_sha256"]
    assert recorded == file_sha256(weights)


def test_calibration_of_other_weights_is_refused_everywhere(artifact, tmp_path) -> None:
    Predictor.from_artifact(artifact)  # fresh: loads
    _save_tiny(artifact, seed=1)  # retrained by hand: new weights, old calibration.json
    command = f"trustgc calibrate --model {artifact}"
    with pytest.raises(ArtifactError, match="other weights") as refused:
        Predictor.from_artifact(artifact)
    assert command in str(refused.value)
    with pytest.raises(ArtifactError, match="other weights"):
        build_archive(artifact, tmp_path / "store")
    assert not (tmp_path / "store" / "tiny.mar").exists()
    _calibrate(artifact)  # the named command's effect: valid again
    Predictor.from_artifact(artifact)


def test_calibration_without_a_weights_hash_is_refused(artifact) -> None:
    path = artifact / CALIBRATION_FILE
    data = json.loads(path.read_text())
    del data["weights_sha256"]
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="does not record which weights"):
        Predictor.from_artifact(artifact)


def test_calibration_too_small_for_alpha_is_refused_at_fit_and_load(artifact) -> None:
    model, _ = load_model(artifact)
    statistics = dataset_statistics(model, make_synthetic(40, seed=3).images)
    part_a = {name: values[:40] for name, values in statistics.items()}
    part_b = {name: values[40:] for name, values in statistics.items()}  # 120 scores
    assert 1 / 121 > 0.005
    with pytest.raises(ValueError, match=r"1/121 = 0.00826 is above alpha = 0.005"):
        fit_calibration(part_a, part_b, 0.005, 0.05)
    with pytest.raises(ValueError, match="--attack-alpha"):
        fit_calibration(part_a, part_b, 0.05, 0.005)
    fitted = fit_calibration(part_a, part_b, 0.0083, 0.05)  # 1/121 <= 0.0083: allowed
    check_resolution(fitted)
    # a file edited (or written by older code) to an unreachable alpha is refused on load
    path = artifact / CALIBRATION_FILE
    data = json.loads(path.read_text())
    data["ood_alpha"] = 0.001
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="nothing could be flagged"):
        load_calibration(artifact)


def test_retraining_into_an_artifact_removes_what_the_old_weights_made(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    options = dict(config="tiny", out=out, max_steps=2, evaluate=False, progress=False)
    train(TrainOptions(**options))
    before = weights_sha256(out)
    _calibrate(out)
    for name in ("model.onnx", "onnx.json"):  # stand-ins: only their removal matters here
        (out / name).write_text("{}")
    capsys.readouterr()
    train(TrainOptions(**options, seed=7))
    assert weights_sha256(out) != before
    for name in (CALIBRATION_FILE, "model.onnx", "onnx.json"):
        assert not (out / name).exists(), name
    assert f"trustgc calibrate --model {out}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not calibrated"):
        Predictor.from_artifact(out)


def test_archive_version_is_the_served_version(artifact, tmp_path) -> None:
    default = build_archive(artifact, tmp_path / "a")
    pinned = build_archive(artifact, tmp_path / "b", version="2.1")
    for path, version in ((default, "1"), (pinned, "2.1")):
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
            packed = json.loads(archive.read("model.json"))
        assert manifest["model"]["modelVersion"] == version
        assert packed["version"] == version  # the handler answers with model.json's version
    assert json.loads((artifact / "model.json").read_text())["version"] == "1"  # untouched
    with pytest.raises(ValueError, match="version"):
        build_archive(artifact, tmp_path / "c", version="1 2")


def test_shipped_calibration_matches_the_shipped_weights() -> None:
    shipped = Path(__file__).resolve().parents[2] / "model_store" / "fashion_mnist"
    calibration = load_calibration(shipped)  # raises if stale
    assert calibration.weights_sha256 == weights_sha256(shipped)
    assert np.isclose(calibration.ood_alpha, 0.01)


def test_archive_refuses_an_onnx_export_of_other_weights(artifact, tmp_path) -> None:
    (artifact / "model.onnx").write_bytes(b"stand-in: never opened, the hash check comes first")
    (artifact / "onnx.json").write_text(json.dumps({"weights_sha256": "0" * 64}))
    with pytest.raises(ArtifactError, match=f"`trustgc export-onnx --model {artifact}`"):
        build_archive(artifact, tmp_path / "store")
    assert not (tmp_path / "store" / "tiny.mar").exists()
