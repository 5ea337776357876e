"""The models of a report: calibrated copies of the IB-INNs, the baseline, their info."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from tqdm import tqdm

from training.calibrate import calibrate_artifact
from training.report.cache import _Cache, _sha256
from training.report.options import ReportOptions
from trustgc.artifact import ModelManifest, load_model, read_json, write_json
from trustgc.trust.predictor import Predictor

WEIGHTS = "weights.safetensors"


@dataclass
class _Model:
    name: str
    path: Path  # the directory used: calibrated copy (GC) or the source (baseline)
    source: Path
    beta: float | None  # None: the discriminative baseline
    manifest: ModelManifest
    network: nn.Module
    predictor: Predictor | None
    digest: str

    @property
    def label(self) -> str:
        if self.beta is None:
            return "baseline"
        return "inf" if math.isinf(self.beta) else f"{self.beta:g}"


def _prepare_gc(source: Path, options: ReportOptions) -> _Model:
    """Copy a GC artifact to WORK/models[_quick]/NAME and calibrate the copy (once)."""
    source = Path(source)
    folder = "models_quick" if options.calibration_size else "models"
    target = options.work_dir / folder / source.name
    digest = _sha256(source / WEIGHTS)
    manifest = read_json(source / "model.json")
    size = int(manifest["training"]["calibration_size"])
    if options.calibration_size:  # a prefix of the same held-out split (see docs/report)
        size = min(size, options.calibration_size)
    fresh = (
        (target / "calibration.json").is_file()
        and (target / WEIGHTS).is_file()
        and _sha256(target / WEIGHTS) == digest
        and int(read_json(target / "model.json")["training"]["calibration_size"]) == size
    )
    if not fresh:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for item in source.iterdir():
            if item.is_file() and item.name != "calibration.json":
                shutil.copy2(item, target / item.name)
        manifest["training"]["calibration_size"] = size
        write_json(target / "model.json", manifest)
        calibrate_artifact(target, options.data_dir)
    predictor = Predictor.from_artifact(target)
    beta = float(predictor.manifest.training.get("beta", math.nan))
    return _Model(
        source.name, target, source, beta, predictor.manifest, predictor.model, predictor, digest
    )


def _load_baseline(source: Path) -> _Model:
    network, manifest = load_model(Path(source))
    if manifest.config.kind == "ibinn":
        raise ValueError(f"--baseline {source} is an IB-INN, expected the discriminative CNN")
    digest = _sha256(Path(source) / WEIGHTS)
    return _Model(
        Path(source).name, Path(source), Path(source), None, manifest, network, None, digest
    )


def _load_models(model_dirs, baseline_dir, options, cache: _Cache) -> list[_Model]:
    if not model_dirs:
        raise ValueError("give at least one IB-INN model directory")
    started = time.perf_counter()
    models = []
    for directory in tqdm(model_dirs, desc="calibrate copies", disable=not options.progress):
        models.append(_prepare_gc(Path(directory), options))
    models.sort(key=lambda m: m.beta)
    if baseline_dir is not None:
        models.append(_load_baseline(Path(baseline_dir)))
    cache._account("prepare (this run)", time.perf_counter() - started)
    return models


def _model_info(model: _Model) -> dict[str, Any]:
    training = model.manifest.training
    return {
        "name": model.name,
        "label": model.label,
        "beta": model.beta,
        "source": str(model.source),
        "used": str(model.path),
        "kind": model.manifest.config.kind,
        "parameters": int(sum(p.numel() for p in model.network.parameters())),
        "weights_sha256": model.digest[:16],
        "command": training.get("command"),
        "training_seconds": training.get("training_seconds"),
        "hardware": training.get("hardware"),
        "epochs_completed": training.get("epochs_completed"),
        "steps": training.get("steps"),
        "calibration": (
            read_json(model.path / "calibration.json").get("split")
            if (model.path / "calibration.json").is_file()
            else None
        ),
    }
