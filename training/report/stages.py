"""The measuring stages on clean, OoD and corrupted images (Table 2, OoD table, Table 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import training.corruptions as corruptions_module
from training.corruptions import CORRUPTIONS, corrupt
from training.data import ImageDataset
from training.data_root import data_root
from training.evaluate import metrics_from_outputs
from training.ood import OOD_SETS, make_ood_set
from training.report.cache import _Cache, _sha256
from training.report.scoring import OOD_METHODS, _auc, _entropy, _score
from trustgc.inference import ModelOutputs


def _clean_stage(models, test: ImageDataset, options, cache: _Cache) -> dict[str, dict]:
    """Table 2 metrics and the clean reference scores of every model."""
    out = {}
    for model in tqdm(models, desc="clean test set", disable=not options.progress):
        key = {"digest": model.digest, "n": len(test), "calib": options.calibration_size}

        def compute(model=model):
            starts = range(0, len(test), 1000)
            bar = tqdm(starts, desc=f"  {model.name}", leave=False, disable=not options.progress)
            parts = [_score(model, test.images[i : i + 1000], options) for i in bar]
            scores = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
            return {**scores, "labels": test.labels}

        scores = cache.arrays("clean", model.name, key, compute)
        log_likelihood = scores.pop("log_likelihood", None)
        metrics = _table2_metrics(model, scores["log_posterior"], log_likelihood, test.labels)
        out[model.name] = {"metrics": metrics, "scores": scores}
    return out


def _table2_metrics(model, log_posterior, log_likelihood, labels) -> dict:
    """Table 2 metrics via ``metrics_from_outputs`` from the cached per-image outputs."""
    dim = int(model.manifest.config.input.dims)
    outputs = ModelOutputs(log_posterior, log_likelihood, None, None, dim)
    metrics = metrics_from_outputs(outputs, labels)
    confident = np.exp(log_posterior.max(axis=1)) >= 0.997  # the OCE's critical confidence
    metrics["n_confident"] = int(confident.sum())
    metrics["n_confident_wrong"] = int((log_posterior.argmax(axis=1) != labels)[confident].sum())
    return metrics


def _ood_stage(models, test, clean, options, cache) -> dict[str, dict]:
    """AUC (%) per OoD set and method; the baseline gets max-posterior only."""
    out: dict[str, dict] = {}
    for model in tqdm(models, desc="OoD sets", disable=not options.progress):
        key = {"digest": model.digest, "n": options.n_ood, "test": len(test), "seed": options.seed}
        key["calib"] = options.calibration_size

        def compute(model=model):
            nchw = test.images.transpose(0, 3, 1, 2)
            rows = {}
            for name in OOD_SETS:
                try:
                    # served decoding; make_ood_set speaks (N, C, H, W), the report (N, H, W, C)
                    images = make_ood_set(
                        name, nchw, options.n_ood, data_root(), options.seed
                    ).transpose(0, 2, 3, 1)
                except (ValueError, OSError) as error:
                    rows[name] = {"error": str(error).splitlines()[0]}
                    continue
                scores = _score(model, images, options)
                reference = clean[model.name]["scores"]
                methods = OOD_METHODS if model.predictor else ("max_posterior",)
                rows[name] = {m: _auc(reference[m], scores[m]) for m in methods}
                rows[name]["n"] = len(images)
            return rows

        out[model.name] = cache.json("ood", model.name, key, compute)
    return out


def _corruption_subset(test: ImageDataset, options) -> np.ndarray:
    order = np.random.default_rng(options.seed).permutation(len(test))
    return np.sort(order[: min(options.n_corrupt, len(test))])


def _corruption_stage(models, test, clean, options, cache) -> dict[str, dict]:
    """Per model, type and severity: error, mean entropy and (GC) production AUC vs clean."""
    subset = _corruption_subset(test, options)
    images, labels = test.images[subset], test.labels[subset]
    corrupted: dict[tuple[str, int], np.ndarray] = {}
    out = {}
    for model in models:
        key = {
            "digest": model.digest,
            "subset": subset.tolist(),
            "severities": list(options.severities),
            "seed": options.seed,
            "calib": options.calibration_size,
            "test": len(test),
            "code": _sha256(Path(corruptions_module.__file__)),
        }

        def compute(model=model):
            result: dict[str, Any] = {}
            reference = clean[model.name]["scores"]
            bar = tqdm(CORRUPTIONS, desc=f"corruptions {model.name}", disable=not options.progress)
            for name in bar:
                pooled = []
                for severity in options.severities:
                    if (name, severity) not in corrupted:
                        corrupted[name, severity] = corrupt(images, name, severity, options.seed)
                    scores = _score(model, corrupted[name, severity], options)
                    wrong = scores["log_posterior"].argmax(axis=1) != labels
                    cell = {"error": float(wrong.mean())}
                    cell["entropy"] = float(_entropy(scores["log_posterior"]).mean())
                    if model.predictor is not None:
                        cell["auc"] = _auc(reference["production"], scores["production"])
                        pooled.append(scores["production"])
                    result[f"{name}/{severity}"] = cell
                if pooled:
                    result[f"{name}/auc"] = _auc(reference["production"], np.concatenate(pooled))
            return result

        out[model.name] = cache.json("corrupt", model.name, key, compute)
        log_posterior = clean[model.name]["scores"]["log_posterior"][subset]
        out[model.name]["clean_error"] = float(np.mean(log_posterior.argmax(axis=1) != labels))
        out[model.name]["clean_entropy"] = float(_entropy(log_posterior).mean())
    return out


def _corruption_summary(raw: dict, models, options) -> dict[str, dict]:
    """mCE, relative mCE (both in %, baseline = 100), entropy increase, mean OoD AUC."""
    baseline = next((m for m in models if m.beta is None), None)
    summary = {}
    for model in models:
        cells = raw[model.name]
        errors = {
            f: np.array([cells[f"{f}/{s}"]["error"] for s in options.severities])
            for f in CORRUPTIONS
        }
        entropies = [cells[f"{f}/{s}"]["entropy"] for f in CORRUPTIONS for s in options.severities]
        row: dict[str, Any] = {
            "clean_error": cells["clean_error"],
            "corruption_error": float(np.mean([e.mean() for e in errors.values()])),
            "error_per_type": {f: float(e.mean()) for f, e in errors.items()},
            "entropy_increase": float(np.mean(entropies) - cells["clean_entropy"]),
            "mce": None,
            "relative_mce": None,
        }
        if baseline is not None:
            base = raw[baseline.name]
            ce, rel = [], []
            for f in CORRUPTIONS:
                base_errors = np.array([base[f"{f}/{s}"]["error"] for s in options.severities])
                if base_errors.sum() > 0:
                    ce.append(errors[f].sum() / base_errors.sum())
                degradation = (base_errors - base["clean_error"]).sum()
                if degradation > 0:
                    rel.append((errors[f] - cells["clean_error"]).sum() / degradation)
            row["mce"] = 100.0 * float(np.mean(ce)) if ce else None
            row["relative_mce"] = 100.0 * float(np.mean(rel)) if rel else None
            row["relative_types"] = len(rel)
        if model.predictor is not None:
            row["auc_per_type"] = {f: cells[f"{f}/auc"] for f in CORRUPTIONS}
            row["auc_mean"] = float(np.mean(list(row["auc_per_type"].values())))
        summary[model.name] = row
    return summary
