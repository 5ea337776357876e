"""The Carlini-Wagner attack stage (Fig. 7) through ``training.attack_eval``."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from training.data import ImageDataset

ATTACK_SETTINGS = tuple((k, d) for k in (0.01, 1.0, math.inf) for d in (0.0, 66.0, 1000.0))


def _write_idx_subset(test: ImageDataset, count: int, folder: Path) -> Path:
    """The first ``count`` test images as an MNIST-layout IDX pair (for evaluate_attacks)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = test.images[:count]
    images = images[..., 0] if images.shape[-1] == 1 else images
    labels = test.labels[:count].astype(np.uint8)
    for stem, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
        (folder / stem).write_bytes(header + np.ascontiguousarray(array).tobytes())
    return folder


def _attack_stage(models, baseline, test, options, cache) -> dict[str, Any]:
    """Carlini-Wagner (kappa x d) per chosen GC through training.attack_eval."""
    try:
        from training.attack_eval import evaluate_attacks
    except ImportError as error:  # another engineer's module: report, don't fail
        return {"skipped": f"training.attack_eval unavailable: {error}"}
    if baseline is None:
        return {"skipped": "no baseline given"}
    chosen = [
        m
        for m in models
        if m.predictor is not None
        and m.beta
        and (options.attack_betas is None or m.label in options.attack_betas)
    ]
    if options.quick and options.attack_betas is None:
        chosen = chosen[-1:]
    dataset = chosen[0].manifest.training.get("dataset", "fashion_mnist") if chosen else ""
    data_dir = None
    if dataset == "fashion_mnist":
        count = min(options.attack_clean, len(test))
        data_dir = _write_idx_subset(test, count, options.work_dir / f"attack_data_{count}")
    results = {}
    for model in tqdm(chosen, desc="CW attacks", disable=not options.progress):
        key = {
            "digest": model.digest,
            "baseline": baseline.digest,
            "n": options.attack_n,
            "steps": options.attack_steps,
            "rounds": options.attack_rounds,
            "clean": options.attack_clean,
            "seed": options.seed,
            "calib": options.calibration_size,
        }

        def compute(model=model):
            try:
                return evaluate_attacks(
                    model.path,
                    baseline.path,
                    n_images=options.attack_n,
                    steps=options.attack_steps,
                    settings=ATTACK_SETTINGS,
                    rounds=options.attack_rounds,
                    seed=options.seed,
                    data_dir=data_dir,
                    batch_size=options.attack_n,
                    log=lambda message: tqdm.write(f"  {message}", file=sys.stderr),
                )
            except ValueError as error:
                return {"skipped": str(error)}

        results[model.name] = cache.json("attack", model.name, key, compute)
    return {"models": results}
