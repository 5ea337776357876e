"""Certified accuracy and cost of randomized smoothing (trustgc.trust.smoothing), per model.

For seeded random Fashion-MNIST test images: the share whose smoothed label is correct *and*
certified at radius >= r, for r in 0, 0.25, 0.5, 0.75, 1.0 ([0, 1] pixel units, the attack
suite's unit), the abstention rate, and the seconds per certified image (CPU, onnxruntime as
served, one thread).  Printed as a markdown table; ``--out`` writes the JSON.

    python benchmarks/certify.py --models model_store/fashion_mnist_robust model_store/fashion_mnist
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.data import load_fashion_mnist  # noqa: E402
from trustgc.backend import choose_backend  # noqa: E402
from trustgc.trust.predictor import Predictor  # noqa: E402

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def evaluate(model: Path, pixels: np.ndarray, labels: np.ndarray, args) -> dict:
    backend = choose_backend(model).backend
    predictor = Predictor.from_artifact(model, backend=backend)
    started = time.perf_counter()
    certificates = predictor.certify(pixels, sigma=args.sigma, n=args.n, n0=args.n0, seed=0)
    seconds = (time.perf_counter() - started) / len(pixels)
    served = predictor.score(pixels).predicted_index
    radius = np.array([c.radius for c in certificates])
    smoothed = np.array([-1 if c.abstained else c.predicted_index for c in certificates])
    correct = smoothed == labels
    return {
        "model": str(model),
        "backend": backend,
        "clean_accuracy_served": float(np.mean(served == labels)),
        "smoothed_accuracy": float(np.mean(correct)),
        "abstained": float(np.mean(smoothed == -1)),
        "agrees_with_served": float(np.mean(smoothed == served)),
        "certified_accuracy": {
            str(r): float(np.mean(correct & (radius >= r) & (radius > 0))) for r in RADII
        },
        "median_radius_correct": float(np.median(radius[correct])) if correct.any() else 0.0,
        "seconds_per_image": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    test = load_fashion_mnist("test")
    chosen = np.random.default_rng(args.seed).choice(len(test.labels), args.images, replace=False)
    pixels = np.ascontiguousarray(test.images[chosen].transpose(0, 3, 1, 2))
    labels = test.labels[chosen]
    rows = [evaluate(model, pixels, labels, args) for model in args.models]
    result = {
        "sigma": args.sigma,
        "n": args.n,
        "n0": args.n0,
        "alpha": 0.001,
        "images": args.images,
        "seed": args.seed,
        "load_average": list(os.getloadavg()),
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    head = " | ".join(f"certified acc. r >= {r:g}" for r in RADII)
    print(f"sigma {args.sigma}, n {args.n}, alpha 0.001, {args.images} test images\n")
    print(f"| model | served acc. | smoothed acc. | abstained | {head} | s / image |")
    print("|---|" + "---|" * (len(RADII) + 4))
    for row in rows:
        cells = " | ".join(f"{100 * row['certified_accuracy'][str(r)]:.0f} %" for r in RADII)
        print(
            f"| {row['model']} | {100 * row['clean_accuracy_served']:.0f} % | "
            f"{100 * row['smoothed_accuracy']:.0f} % | {100 * row['abstained']:.0f} % | {cells} | "
            f"{row['seconds_per_image']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
