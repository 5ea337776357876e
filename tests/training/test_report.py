"""``trustgc report --quick`` end to end on tiny models trained here, plus its formulas.

CI has no runs/: the module trains two tiny IB-INNs (beta 1 and inf) and a tiny CNN baseline
on the synthetic 8x8 data set (a few seconds each, one thread) and writes only under tmp_path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from training.corruptions import CORRUPTIONS
from training.data import load_dataset, make_synthetic
from training.report import (
    ReportOptions,
    _Cache,
    _corruption_summary,
    _write_idx_subset,
)
from training.trainer import TrainOptions, train
from trustgc_cli.main import main

TINY_BASELINE = {
    "model": {
        "name": "tiny_dc",
        "kind": "classifier",
        "input": {"height": 8, "width": 8, "channels": 1, "mean": [0.5], "std": [0.25]},
        "num_classes": 4,
        "stages": [{"blocks": 1, "width": 16, "downsample": "haar"}],
    },
    "training": {
        "dataset": "synthetic",
        "epochs": 4,
        "batch_size": 32,
        "optimizer": "adam",
        "lr": 0.003,
        "warmup_epochs": 0.5,
        "beta": "inf",
        "label_smoothing": 0.0,
        "dequantization_noise": 0.01,
        "calibration_size": 32,
        "augment_hflip": False,
        "augment_crop_padding": 0,
        "seed": 0,
    },
}
SECTIONS = (
    "## Models",
    "## 1. General performance",
    "## 2. Explainability",
    "### 3.1 Corrupted images",
    "### 3.2 Out-of-distribution sets",
    "### 3.3 Adversarial attacks",
    "## 4. Comparison with the paper",
)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny_models")
    config = root / "tiny_dc.json"
    config.write_text(json.dumps(TINY_BASELINE))
    models = {}
    try:
        for name, source, beta in (
            ("beta_1", "tiny", 1.0),
            ("beta_inf", "tiny", math.inf),
            ("dc", str(config), None),
        ):
            options = TrainOptions(
                config=source,
                out=root / name,
                beta=beta,
                epochs=4,
                device="cpu",
                progress=False,
                command=f"pytest tiny {name}",
            )
            train(options)
            models[name] = root / name
    finally:
        torch.set_num_threads(threads)
    return models


@pytest.fixture(scope="module")
def quick_report(tiny_models, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    out = tmp_path_factory.mktemp("report")
    work = tmp_path_factory.mktemp("work")
    argv = [
        "report",
        "--models",
        str(tiny_models["beta_inf"]),
        str(tiny_models["beta_1"]),
        "--baseline",
        str(tiny_models["dc"]),
        "--out",
        str(out),
        "--work-dir",
        str(work),
        "--quick",
        "--n-corrupt",
        "4",
        "--n-ood",
        "16",
        "--attack-n",
        "2",
        "--attack-steps",
        "3",
        "--no-progress",
    ]
    assert main(argv) == 0
    return out, work, argv


def test_quick_report_writes_every_section_and_figure(quick_report) -> None:
    out, _, _ = quick_report
    text = (out / "README.md").read_text()
    for heading in SECTIONS:
        assert heading in text, heading
    assert "Quick mode" in text
    assert "trustgc report --models" in text and "--quick" in text
    assert "pytest tiny beta_1" in text  # each model's training command is recorded
    for figure in (
        "fig2_tradeoff.png",
        "fig3_confident.png",
        "fig3_ambiguous.png",
        "fig4_class_similarity.png",
        "corruption_examples.png",
    ):
        assert (out / figure).stat().st_size > 1000, figure
        assert f"({figure})" in text
    assert len(list(out.glob("fig5_heatmaps_*.png"))) == 4
    assert len(list(out.glob("fig3_ood_*.png"))) == 1


def test_quick_report_numbers(quick_report) -> None:
    out, _, _ = quick_report
    results = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in results["models"]] == ["1", "inf", "baseline"]
    assert results["n_test"] == 256  # the synthetic test split is smaller than --quick's 300
    for name, metrics in results["table2"].items():
        assert 0.0 <= metrics["accuracy"] <= 1.0, name
        assert ("bits_per_dim" in metrics) == (name != "dc")
    summary = results["corruptions"]
    assert set(summary["beta_1"]["error_per_type"]) == set(CORRUPTIONS)
    assert summary["dc"]["mce"] == pytest.approx(100.0)  # the normaliser scores 100
    assert "auc_mean" not in summary["dc"]
    assert 0.0 <= summary["beta_1"]["auc_mean"] <= 100.0
    ood = results["ood"]
    # 28x28 digits reach the 8x8 models as the server would pass them: decoded and resized
    assert ood["beta_1"]["mnist"]["n"] > 0 and "production" in ood["beta_1"]["mnist"]
    for row in (ood["beta_1"]["uniform_noise"], ood["beta_inf"]["constant"]):
        assert set(row) == {
            "production",
            "paper_two_sided",
            "one_sided_likelihood",
            "max_posterior",
            "n",
        }
        assert all(0.0 <= row[k] <= 100.0 for k in row if k != "n")
    assert set(ood["dc"]["uniform_noise"]) == {"max_posterior", "n"}
    attacked = results["attacks"]["models"]
    assert list(attacked) == ["beta_inf"]  # quick mode attacks one model
    row = attacked["beta_inf"]
    assert "skipped" in row or len(row["gc"]) == 9
    calibration = results["models"][0]["calibration"]
    assert calibration["calibration_size"] == 128  # min(tiny's split, quick's 300)


def test_rerun_reuses_the_cache(quick_report) -> None:
    out, work, argv = quick_report
    before = json.loads((out / "results.json").read_text())
    files = sorted(p.name for p in (work / "cache").iterdir())
    assert main(argv) == 0
    after = json.loads((out / "results.json").read_text())
    for key in ("table2", "ood", "corruptions", "attacks"):
        assert after[key] == before[key], key
    assert sorted(p.name for p in (work / "cache").iterdir()) == files  # nothing recomputed
    spent, again = (r["runtime"]["compute_seconds_per_stage"] for r in (before, after))
    for stage in ("clean", "ood", "corrupt", "attack"):
        assert again[stage] == spent[stage], stage  # the stored compute times, not new ones
    assert (work / "models_quick" / "beta_1" / "calibration.json").is_file()


def test_sources_are_not_modified(tiny_models, quick_report) -> None:
    for path in tiny_models.values():
        assert not (path / "calibration.json").exists()


def _summary_inputs(base_errors, model_errors, base_clean, model_clean):
    def raw(errors, clean):
        cells = {
            f"{f}/{s}": {"error": e, "entropy": 1.0}
            for f in CORRUPTIONS
            for s, e in zip((1, 2), errors, strict=True)
        }
        cells.update({f"{f}/auc": 60.0 for f in CORRUPTIONS})
        return {**cells, "clean_error": clean, "clean_entropy": 0.5}

    models = [
        SimpleNamespace(name="gc", beta=1.0, predictor=object()),
        SimpleNamespace(name="dc", beta=None, predictor=None),
    ]
    raw_results = {"gc": raw(model_errors, model_clean), "dc": raw(base_errors, base_clean)}
    return raw_results, models, ReportOptions(severities=(1, 2))


def test_mce_and_relative_mce_follow_hendrycks_and_dietterich() -> None:
    raw, models, options = _summary_inputs((0.2, 0.4), (0.3, 0.6), 0.1, 0.15)
    summary = _corruption_summary(raw, models, options)
    gc, dc = summary["gc"], summary["dc"]
    assert gc["mce"] == pytest.approx(100 * 0.9 / 0.6)  # sum_s E_gc / sum_s E_dc
    # sum_s (E_gc - clean_gc) / sum_s (E_dc - clean_dc) = (0.15 + 0.45) / (0.1 + 0.3)
    assert gc["relative_mce"] == pytest.approx(100 * 0.6 / 0.4)
    assert dc["mce"] == pytest.approx(100.0) and dc["relative_mce"] == pytest.approx(100.0)
    assert gc["entropy_increase"] == pytest.approx(0.5)
    assert gc["corruption_error"] == pytest.approx(0.45)
    assert gc["auc_mean"] == pytest.approx(60.0)


def test_relative_mce_skips_types_the_baseline_is_not_hurt_by() -> None:
    raw, models, options = _summary_inputs((0.1, 0.1), (0.3, 0.6), 0.1, 0.15)
    summary = _corruption_summary(raw, models, options)
    assert summary["gc"]["relative_mce"] is None and summary["gc"]["relative_types"] == 0
    assert summary["gc"]["mce"] == pytest.approx(100 * 0.9 / 0.2)


def test_idx_subset_round_trips_through_the_loader(tmp_path: Path) -> None:
    data = make_synthetic(num_per_class=5, size=8)
    folder = _write_idx_subset(data, 7, tmp_path / "subset")
    loaded = load_dataset("fashion_mnist", "test", folder)
    np.testing.assert_array_equal(loaded.images, data.images[:7])
    np.testing.assert_array_equal(loaded.labels, data.labels[:7])


def test_cache_returns_stored_results_only_for_the_same_key(tmp_path: Path) -> None:
    cache = _Cache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(3.0)}

    first = cache.arrays("stage", "m", {"n": 1}, compute)
    again = cache.arrays("stage", "m", {"n": 1}, compute)
    np.testing.assert_array_equal(first["x"], again["x"])
    assert len(calls) == 1
    cache.arrays("stage", "m", {"n": 2}, compute)
    assert len(calls) == 2
    assert cache.json("j", "m", {"a": 1}, lambda: {"v": np.float64(2.5)}) == {"v": 2.5}
    assert cache.json("j", "m", {"a": 1}, lambda: {"v": 0}) == {"v": 2.5}
