"""The handler's metrics: every definition declared for TorchServe's prometheus mode, and the
served alpha and calibration identity exported from the calibration actually served (the alert
rules read them: deploy/prometheus/rules/trustgc.rules.yml, group trustgc-alphas)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from serving.metrics import ALPHA, CALIBRATION_INFO, METRICS, calibration_id

REPO_ROOT = Path(__file__).resolve().parents[2]
METRICS_YAML = REPO_ROOT / "deploy" / "torchserve" / "metrics.yaml"
RULES = REPO_ROOT / "deploy" / "prometheus" / "rules" / "trustgc.rules.yml"
MODEL_DIR = REPO_ROOT / "model_store" / "fashion_mnist"
ARTIFACT = ("model.json", "weights.safetensors", "calibration.json")


def test_every_metric_is_declared_in_metrics_yaml_as_defined() -> None:
    declared = yaml.safe_load(METRICS_YAML.read_text())["model_metrics"]
    by_name = {
        entry["name"]: (kind, entry["unit"], tuple(entry["dimensions"]))
        for kind, entries in declared.items()
        for entry in entries
    }
    for spec in METRICS:
        assert by_name.get(spec.name) == (spec.kind, spec.unit, spec.labels), spec.name


def test_alert_rules_read_the_served_alpha() -> None:
    groups = {g["name"]: g["rules"] for g in yaml.safe_load(RULES.read_text())["groups"]}
    records = {rule["record"]: rule["expr"] for rule in groups["trustgc-alphas"]}
    assert set(records) == {"trustgc:ood_alpha", "trustgc:attack_alpha"}
    for test in ("ood", "attack"):
        assert f'{ALPHA.name}{{test="{test}"}}' in records[f"trustgc:{test}_alpha"]
    assert not (RULES.parent / "trustgc-alphas.rules.yml").exists(), "a rendered copy is back"


class _Gauge:
    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], float] = {}

    def add_or_update(self, value: float, labels: list[str]) -> None:
        self.values[tuple(labels)] = value


class _Cache:
    """The part of TorchServe's metrics cache the handler calls, recording every metric."""

    def __init__(self) -> None:
        self.metrics: dict[str, tuple[str, list[str], object, _Gauge]] = {}

    def add_metric_to_cache(self, name, unit, dimension_names, metric_type):
        gauge = _Gauge()
        self.metrics[name] = (unit, dimension_names, metric_type, gauge)
        return gauge


class _Context:
    def __init__(self, model_dir: Path) -> None:
        self.system_properties = {"model_dir": str(model_dir)}
        self.manifest = {"model": {"modelName": "served_name"}}
        self.model_yaml_config: dict = {"trustgc": {"backend": "torch"}}
        self.metrics = _Cache()


@pytest.mark.skipif(
    not all((MODEL_DIR / name).is_file() for name in ARTIFACT),
    reason=f"the shipped model artifact {MODEL_DIR} is incomplete",
)
def test_handler_exports_the_alpha_and_identity_of_the_calibration_it_serves(
    tmp_path: Path,
) -> None:
    from serving.handler import TrustGCHandler

    for name in ARTIFACT:
        shutil.copy2(MODEL_DIR / name, tmp_path / name)
    if (MODEL_DIR / "background").is_dir():  # the ratio statistic's flow (trustgc/background.py)
        shutil.copytree(MODEL_DIR / "background", tmp_path / "background")
    # serve a calibration whose alphas differ from the shipped ones (and from each other)
    path = tmp_path / "calibration.json"
    calibration = json.loads(path.read_text())
    calibration["ood_alpha"], calibration["attack_alpha"] = 0.05, 0.02
    path.write_text(json.dumps(calibration))

    context = _Context(tmp_path)
    threads = torch.get_num_threads()
    try:
        TrustGCHandler().initialize(context)
    finally:
        torch.set_num_threads(threads)
    metrics = context.metrics.metrics
    alphas = metrics[ALPHA.name][3].values
    assert alphas == {("served_name", "ood"): 0.05, ("served_name", "attack"): 0.02}
    identity = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert calibration_id(path) == identity
    assert metrics[CALIBRATION_INFO.name][3].values == {("served_name", identity): 1}
    for spec in METRICS:  # registered as declared, with TorchServe's own metric types
        unit, labels, kind, _ = metrics[spec.name]
        assert (unit, tuple(labels), kind.name.lower()) == (spec.unit, spec.labels, spec.kind)
