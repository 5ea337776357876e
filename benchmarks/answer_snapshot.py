"""Served answers as JSON lines, for checking that a refactoring changes no answer.

Runs the in-process path every runtime serves (``Predictor.predict`` -> the response schema) on
the first Fashion-MNIST, MNIST and notMNIST test images with both backends, one line per
answer: ``backend<TAB>set<TAB>index<TAB>answer JSON``.  Take a snapshot before a change and one
after, then ``cmp`` them; a byte difference is a changed answer.

    python benchmarks/answer_snapshot.py before.jsonl [--model DIR] [--fashion 1000] [--ood 300]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from serving.responses import build_response
from training.data import load_dataset
from trustgc.trust.predictor import Predictor

BACKENDS = ("torch", "onnxruntime")


def _channels_first(images: np.ndarray) -> np.ndarray:
    """The data readers give (N, H, W, C); the predictor takes (N, C, H, W)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="JSON-lines file to write")
    parser.add_argument("--model", type=Path, default=Path("model_store/fashion_mnist"))
    parser.add_argument("--fashion", type=int, default=1000, help="Fashion-MNIST test images")
    parser.add_argument("--ood", type=int, default=300, help="MNIST and notMNIST test images each")
    args = parser.parse_args()

    sets = {"fmnist": load_dataset("fashion_mnist", "test").images[: args.fashion]}
    for name in ("mnist", "notmnist"):
        sets[name] = load_dataset(name, "test").images[: args.ood]
    sets = {name: _channels_first(images) for name, images in sets.items()}
    with args.out.open("w") as out:
        for backend in BACKENDS:
            predictor = Predictor.from_artifact(args.model, backend=backend)
            manifest = predictor.manifest
            for set_name, pixels in sets.items():
                for index, result in enumerate(predictor.predict(pixels)):
                    answer = build_response(
                        result, manifest.name, manifest.version, manifest.class_names, 10
                    )
                    out.write(f"{backend}\t{set_name}\t{index}\t{answer.model_dump_json()}\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
