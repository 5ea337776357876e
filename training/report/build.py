"""``build_report``: run every stage, then write ``results.json``, README and figures."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.corruptions import parameter_table
from training.data import load_recorded
from training.report.attack import _attack_stage
from training.report.cache import _Cache, _json_default
from training.report.explain import _explain_stage
from training.report.markdown import _write_readme
from training.report.models import _load_models, _model_info
from training.report.options import ReportOptions
from training.report.plots import _plot_attacks, _plot_corruption_examples, _plot_tradeoff
from training.report.stages import (
    _clean_stage,
    _corruption_stage,
    _corruption_subset,
    _corruption_summary,
    _ood_stage,
)


def build_report(
    model_dirs: Sequence[Path],
    baseline_dir: Path | None,
    out: Path,
    options: ReportOptions = ReportOptions(),
) -> dict[str, Any]:
    """Measure everything, write ``out/README.md``, ``out/results.json`` and the figures."""
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        with torch.no_grad():  # the attack stage turns gradients on where it needs them
            out = Path(out)
            out.mkdir(parents=True, exist_ok=True)
            cache = _Cache(options.work_dir)
            models = _load_models(model_dirs, baseline_dir, options, cache)
            baseline = next((m for m in models if m.beta is None), None)
            gc = next(m for m in models if m.beta is not None)
            dataset = gc.manifest.training.get("dataset", "fashion_mnist")
            test = load_recorded(gc.manifest.training, "test", options.data_dir)
            if options.n_test is not None:
                test = test.subset(np.arange(min(options.n_test, len(test))))
            clean = _clean_stage(models, test, options, cache)
            results: dict[str, Any] = {"dataset": dataset, "n_test": len(test)}
            results["models"] = [_model_info(m) for m in models]
            results["table2"] = {m.name: clean[m.name]["metrics"] for m in models}
            _plot_tradeoff(models, clean, out / "fig2_tradeoff.png")
            results["ood"] = _ood_stage(models, test, clean, options, cache)
            raw = _corruption_stage(models, test, clean, options, cache)
            results["corruptions"] = _corruption_summary(raw, models, options)
            results["corruptions_raw"] = raw
            subset = _corruption_subset(test, options)
            _plot_corruption_examples(
                test.images[subset[0]], options, out / "corruption_examples.png"
            )
            results["attacks"] = _attack_stage(models, baseline, test, options, cache)
            _plot_attacks(results["attacks"], out / "fig7_attacks.png")
            results["explain"] = _explain_stage(models, test, clean, options, out)
            results["runtime"] = _runtime(started, cache)
            results["options"] = {k: v for k, v in asdict(options).items() if k != "command"}
            results["command"] = options.command
            results["parameter_table"] = parameter_table()
            (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
            _write_readme(results, out)
            return results
    finally:
        torch.set_num_threads(threads)


def _runtime(started: float, cache: _Cache) -> dict[str, Any]:
    return {
        "wall_seconds_this_run": time.perf_counter() - started,
        "compute_seconds_per_stage": dict(cache.seconds),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_end": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
