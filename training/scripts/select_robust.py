"""Pick the robust model to ship among adversarially trained runs, on held-out training data.

Rule: among the runs whose accuracy on ``--pgd-images`` images of their *calibration split*
(held-out training images, never the test set) under a ``--pgd-steps``-step PGD-L2 attack at
radius ``--pgd-epsilon`` (cross-entropy, random start) is at least ``--min-pgd-accuracy`` (robust
in fact, not masked), the one with the highest clean accuracy on that split; the result says
whether it also meets ``--min-accuracy`` (the issue's 91 % on test, plus a margin for the
difference between the splits).  The attack suite's results on test images are reported for
every run, but select nothing.

History, because it matters: the first rule (largest training radius that keeps the accuracy)
picked a run whose robustness was gradient masking: trained at epsilon 2.0, it kept 92 % clean
accuracy and 54 % accuracy against its 4-step training attack, and the adaptive suite then
fooled it at a median L2 of 0.30, like the undefended model.  The 50-step held-out PGD shows
the same (2 % accuracy) without touching the test set.  A rule must measure robustness with a
stronger attack than the one the model was trained against, and must require it.

    python training/scripts/select_robust.py runs/robust_* [--min-accuracy 0.915] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from training.adversarial import pgd_l2  # noqa: E402
from training.config import AdversarialConfig  # noqa: E402
from training.data import load_recorded, split_calibration  # noqa: E402
from trustgc.artifact import load_model  # noqa: E402
from trustgc.inference import model_outputs  # noqa: E402
from trustgc.preprocess import pixels_to_unit  # noqa: E402


def held_out_scores(run: Path, device: str, attack: AdversarialConfig, n_attacked: int) -> dict:
    """Clean accuracy on the run's own calibration split (as recorded in its manifest), and
    accuracy under PGD-L2 on its first ``n_attacked`` images (a seeded random start)."""
    model, manifest = load_model(run, device)
    training = manifest.training
    full = load_recorded(training, "train")
    _, calibration = split_calibration(
        full, int(training["calibration_size"]), int(training["calibration_seed"])
    )
    pixels = torch.from_numpy(np.ascontiguousarray(calibration.images.transpose(0, 3, 1, 2)))
    outputs = model_outputs(model, pixels, 500, device)
    clean = float(np.mean(outputs.probabilities.argmax(1) == calibration.labels))
    x = pixels_to_unit(pixels[:n_attacked]).to(device)
    labels = torch.from_numpy(calibration.labels[:n_attacked]).long().to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    correct = 0
    for start in range(0, n_attacked, 128):
        rows = slice(start, start + 128)
        x_adv = pgd_l2(model, x[rows], labels[rows], attack, generator)
        with torch.no_grad():
            correct += int((model.score(x_adv).logits.argmax(1) == labels[rows]).sum())
    return {"calibration_accuracy": clean, "pgd_accuracy": correct / n_attacked}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--min-accuracy", type=float, default=0.915)
    parser.add_argument("--min-pgd-accuracy", type=float, default=0.5)
    parser.add_argument("--pgd-epsilon", type=float, default=1.0)
    parser.add_argument("--pgd-steps", type=int, default=50)
    parser.add_argument("--pgd-images", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    attack = AdversarialConfig(epsilon=args.pgd_epsilon, steps=args.pgd_steps)
    rows = []
    for run in args.runs:
        manifest = json.loads((run / "model.json").read_text())
        adversarial = manifest["training"]["config"].get("adversarial") or {}
        rows.append(
            {
                "run": str(run),
                "epsilon": adversarial.get("epsilon", 0.0),
                "adversarial_weight": adversarial.get("adversarial_weight", 0.0),
                **held_out_scores(run, args.device, attack, args.pgd_images),
            }
        )
        print(rows[-1], file=sys.stderr, flush=True)
    robust = [r for r in rows if r["pgd_accuracy"] >= args.min_pgd_accuracy]
    chosen = max(robust, key=lambda r: r["calibration_accuracy"], default=None)
    result = {
        "rule": __doc__.split("\n\n")[1],
        "min_accuracy": args.min_accuracy,
        "min_pgd_accuracy": args.min_pgd_accuracy,
        "meets_min_accuracy": bool(chosen and chosen["calibration_accuracy"] >= args.min_accuracy),
        "pgd": attack.model_dump(),
        "pgd_images": args.pgd_images,
        "runs": rows,
    }
    result["chosen"] = chosen["run"] if chosen else None
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
