"""Robustness curves under the adaptive attack suite: ``python -m training.robustness``.

For each attacked image the suite (training/adaptive_attacks.py) runs every mode and keeps the
smallest L2 at which the *service* accepted a wrong label (for an undefended classifier: any
wrong label).  The curve is the share of attacked images with such an answer at L2 <= eps, eps
in 0.25, 0.5, ..., 3.0 ([0, 1] pixel units, measured on the 8-bit adversarial).

Images: seeded random test images that the GC classifies correctly and accepts when clean (the
others are counted in the JSON); the same images for every model and mode.  A baseline's clean
errors on them are fooled at L2 = 0.
Modes run one after the other over all images, in chunks, and the JSON is rewritten after
every chunk, so an interrupted run still leaves every finished mode's numbers.  A mode is not
run on an image whose best L2 so far is already <= the smallest eps (it cannot move the curve).

``--merge FILES --out JSON`` combines runs of different modes on the same images (modes run in
parallel processes).  ``--plot FILES --out PNG`` draws the curves of result files into one PNG
and prints them as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trustgc.trust.table import Decision

if TYPE_CHECKING:  # the module imports torch only when it runs attacks (light for the CLI)
    from training.adaptive_attacks import AttackMode
    from training.surrogates import PngSurrogate
    from trustgc.trust import Predictor

__all__ = [
    "EPSILONS",
    "SUITE_NAMES",
    "add_arguments",
    "markdown_table",
    "robustness_curve",
    "select_images",
    "suite",
]

EPSILONS = tuple(round(0.25 * k, 2) for k in range(1, 13))
SUITE_NAMES = ("full", "strong", "no_surrogate", "undefended")
#: Suites whose attacker follows the PNG statistics through the surrogate.
SURROGATE_SUITES = ("full", "strong")


def suite(name: str) -> tuple[AttackMode, ...]:
    """The modes of a suite: ``full`` (the adaptive suite), ``strong`` (the same modes with three
    times the steps, plus PGD towards a random class: a check that ``full``'s curve is not far
    from what a patient attacker gets), ``no_surrogate`` (the same attacker without the PNG
    surrogate: a gradient-only attacker) or ``undefended`` (the full suite against a classifier
    without detector: no penalty, any wrong label counts).

    Strongest modes first; budgets from a 10-image pilot: PGD with a growing radius was the
    strongest single mode, CW-L2 did better with Adam lr 0.01 for 200 steps than with lr 0.02
    for 150.
    """
    from training.adaptive_attacks import AttackMode

    full = (
        AttackMode(name="pgd_runner_up", kind="pgd", steps=150),
        AttackMode(name="cw_runner_up", steps=200, lr=0.01),
        AttackMode(name="sparse_l1", l1=0.05, steps=150, lr=0.02),
        AttackMode(name="lowfreq_14", grid=14, steps=150, lr=0.02),
        AttackMode(name="lowfreq_7", grid=7, steps=150, lr=0.02),
        AttackMode(name="cw_random", target="random", steps=200, lr=0.01),
    )
    if name == "full":
        return full
    if name == "strong":
        longer = tuple(m.model_copy(update={"steps": 3 * m.steps}) for m in full)
        return (*longer, AttackMode(name="pgd_random", kind="pgd", target="random", steps=450))
    if name == "no_surrogate":
        return tuple(m.model_copy(update={"surrogate": False}) for m in full)
    if name == "undefended":
        return tuple(m.model_copy(update={"d": 0.0, "kappa": 0.0}) for m in full)
    raise ValueError(f"unknown suite {name!r}; known: {SUITE_NAMES}")


def robustness_curve(min_l2: np.ndarray, epsilons=EPSILONS) -> list[float]:
    """Share of images whose minimal successful L2 is <= eps, per eps (inf: never fooled)."""
    min_l2 = np.asarray(min_l2, dtype=np.float64)
    return [float(np.mean(min_l2 <= eps)) for eps in epsilons]


def select_images(
    gc: Predictor, pixels: np.ndarray, labels: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, dict[str, int]]:
    """Indices of n seeded random test images that the GC classifies correctly and accepts."""
    order = np.random.default_rng(seed).permutation(len(pixels))
    chosen: list[int] = []
    counts = {"drawn": 0, "gc_wrong": 0, "gc_not_accepted": 0}
    for start in range(0, len(order), 2 * n):
        batch = order[start : start + 2 * n]
        table = gc.score(pixels[batch])
        correct = table.predicted_index == labels[batch]
        accepted = table.decisions == Decision.ACCEPTED
        for row, index in enumerate(batch):
            if len(chosen) == n:
                return np.array(chosen), counts
            counts["drawn"] += 1
            counts["gc_wrong"] += int(not correct[row])
            counts["gc_not_accepted"] += int(correct[row] and not accepted[row])
            if correct[row] and accepted[row]:
                chosen.append(int(index))
    return np.array(chosen), counts


def _fit_surrogate(seed: int) -> PngSurrogate:
    from training.data import load_fashion_mnist
    from training.surrogates import fit_png_surrogate, perturbed_copies

    train = load_fashion_mnist("train").images.transpose(0, 3, 1, 2)
    rng = np.random.default_rng(seed)
    return fit_png_surrogate(perturbed_copies(train[rng.choice(len(train), 300, replace=False)]))


def _summary(per_mode: dict[str, list[float]]) -> dict:
    l2 = np.array(list(per_mode.values()), dtype=np.float64)
    min_l2 = l2.min(axis=0)
    finite = min_l2[np.isfinite(min_l2)]
    return {
        "epsilons": list(EPSILONS),
        "curve": robustness_curve(min_l2),
        "success_any_l2": float(np.mean(np.isfinite(min_l2))),
        "median_min_l2": float(np.median(min_l2)),  # inf if fewer than half were fooled
        "median_min_l2_successful": float(np.median(finite)) if finite.size else None,
        "per_mode_at_1_5": {
            name: float(np.mean(np.asarray(v, dtype=np.float64) <= 1.5))
            for name, v in per_mode.items()
        },
    }


def run(args: argparse.Namespace, command: str) -> dict:
    import torch

    from training.adaptive_attacks import run_mode
    from training.data import load_fashion_mnist
    from trustgc.artifact import file_sha256
    from trustgc.trust import Predictor
    from trustgc.trust.calibration import CALIBRATION_FILE

    torch.set_num_threads(args.threads)
    test = load_fashion_mnist("test")
    pixels, labels = test.images.transpose(0, 3, 1, 2), test.labels
    # the attack needs f's gradient: torch backend
    gc = Predictor.from_artifact(args.gc, backend="torch", device=args.device)
    baseline = (
        Predictor.from_artifact(args.baseline, backend="torch", device=args.device)
        if args.baseline
        else None
    )
    # images are chosen by the GC alone, so that every model is attacked on the same images
    # whichever finishes first; the baseline's clean errors are counted in the JSON
    indices, excluded = select_images(gc, pixels, labels, args.n, args.seed)
    target = gc if args.model == "gc" else baseline
    if target is None:
        raise SystemExit("--model baseline needs --baseline")
    modes = suite(args.suite)
    if args.modes:
        modes = tuple(m for m in modes if m.name in args.modes.split(","))
    with_surrogate = args.suite in SURROGATE_SUITES and args.model == "gc"
    surrogate = _fit_surrogate(args.seed) if with_surrogate else None
    result = {
        "command": command,
        "model": str(args.gc if args.model == "gc" else args.baseline),
        # which calibration (and so which served statistics) the numbers refer to
        "calibration_sha256": file_sha256(Path(args.gc) / CALIBRATION_FILE),
        "served_statistics": sorted(gc.calibration.components),
        "model_kind": args.model,
        "suite": args.suite,
        "modes": [m.model_dump() for m in modes],
        "surrogate": surrogate.model_dump() if surrogate else None,
        "n": int(len(indices)),
        "seed": args.seed,
        "test_indices": indices.tolist(),
        "excluded": excluded,
        "threads": args.threads,
        "device": args.device,
        "l2": {},
        "final_decisions": {},
        "seconds": {},
        "finished": False,
    }
    best = np.full(len(indices), np.inf)
    started = time.time()
    for mode in modes:
        l2 = np.full(len(indices), np.inf)
        counts = {str(d): 0 for d in Decision}
        mode_start = time.time()
        todo = np.flatnonzero(best > EPSILONS[0])
        for start in range(0, len(todo), args.chunk):
            rows = todo[start : start + args.chunk]
            out = run_mode(target, pixels[indices[rows]], labels[indices[rows]], mode, surrogate)
            l2[rows] = out.l2
            for key, value in out.decision_counts.items():
                counts[key] += value
            best = np.minimum(best, l2)
            result["l2"][mode.name] = l2.tolist()
            result["final_decisions"][mode.name] = counts
            result["seconds"][mode.name] = round(time.time() - mode_start, 1)
            result["summary"] = _summary(result["l2"])
            result["load_average"] = list(os.getloadavg())
            _write(args.out, result)
            print(
                f"[{time.time() - started:7.0f}s] {mode.name}: {start + len(rows)}/{len(todo)} "
                f"images, accepted-wrong at L2<=1.5 so far {np.mean(best <= 1.5):.3f}",
                flush=True,
            )
    result["finished"] = True
    result["seconds"]["total"] = round(time.time() - started, 1)
    _write(args.out, result)
    return result


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=1, allow_nan=True).replace("Infinity", '"inf"')
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


_LABELS = {
    ("gc", "full"): "GC: adaptive suite with the PNG surrogate",
    ("gc", "strong"): "GC: the adaptive suite with 3x the steps and PGD to a random class",
    ("gc", "no_surrogate"): "GC: same attacker without the surrogate",
    ("baseline", "undefended"): "CNN baseline (no detector)",
}


def _label(data: dict) -> str:
    """A result's name in plots and tables: its own ``label`` if it has one."""
    return data.get("label") or _LABELS.get((data["model_kind"], data["suite"]), data["suite"])


def plot(files: list[Path], out: Path) -> None:
    """One curve per result file: accepted wrong-label answers vs the L2 budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for file in files:
        data = json.loads(file.read_text())
        summary = data["summary"]
        name = _label(data)
        label = f"{name} (n={data['n']})"
        axis.plot(summary["epsilons"], [100 * v for v in summary["curve"]], marker="o", label=label)
    axis.set_xlabel("L2 budget eps ([0, 1] pixels, 8-bit adversarial)")
    axis.set_ylabel("accepted with a wrong label (%)")
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)


def markdown_table(files: list[Path]) -> str:
    """The curves of result files as a markdown table (percent), plus their medians."""
    rows = []
    header = None
    for file in files:
        data = json.loads(file.read_text())
        summary = data["summary"]
        if header is None:
            header = summary["epsilons"]
        median = summary["median_min_l2"]
        median_text = f"{float(median):.2f}" if np.isfinite(float(median)) else "> 3 (never)"
        modes = ", ".join(data["l2"]) + ("" if data["finished"] else " (run unfinished)")
        rows.append(
            f"| {_label(data)} | {data['n']} | {modes} | "
            + " | ".join(f"{100 * v:.1f}" for v in summary["curve"])
            + f" | {median_text} |"
        )
    head = "| model / attacker | n | modes run | " + " | ".join(f"{e:g}" for e in header)
    rule = "|" + "---|" * (len(header) + 4)
    return "\n".join([head + " | median min L2 |", rule, *rows])


def merge(files: list[Path]) -> dict:
    """One result from runs of different modes on the same model and images (modes run in
    parallel processes): per-image L2s of every mode, the summary over all of them."""
    runs = [json.loads(file.read_text()) for file in files]
    first = runs[0]
    for other in runs[1:]:
        same = ("model", "model_kind", "test_indices", "seed")
        if any(other[key] != first[key] for key in same):
            raise ValueError(f"cannot merge runs that differ in {same}")
        if set(other["l2"]) & set(first["l2"]):
            raise ValueError("runs to merge must not share a mode")
    merged = dict(first)
    merged["command"] = [run["command"] for run in runs]
    for key in ("modes", "l2", "final_decisions", "seconds"):
        merged[key] = (
            [m for run in runs for m in run[key]]
            if key == "modes"
            else {name: v for run in runs for name, v in run[key].items()}
        )
    merged["finished"] = all(run["finished"] for run in runs)
    merged["merged_from"] = [str(file) for file in files]
    merged["summary"] = _summary(merged["l2"])
    return merged


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m training.robustness`` and ``trustgc robustness``."""
    parser.add_argument("--gc", type=Path, default=Path("model_store/fashion_mnist"))
    parser.add_argument("--baseline", type=Path, help="CNN baseline artifact (undefended)")
    parser.add_argument("--model", choices=("gc", "baseline"), default="gc")
    parser.add_argument("--suite", choices=SUITE_NAMES, default="full")
    parser.add_argument("--modes", help="comma-separated subset of the suite's mode names")
    parser.add_argument("--n", type=int, default=200, help="attacked test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=50, help="images per batch")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the attack's tensors)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/robustness_gc.json"))
    parser.add_argument(
        "--plot", type=Path, nargs="+", help="draw these result files into --out (no attack)"
    )
    parser.add_argument(
        "--merge", type=Path, nargs="+", help="merge runs of other modes into --out (no attack)"
    )


def execute(args: argparse.Namespace, command: str) -> int:
    """Run the suite, or with ``--plot`` draw result files and print their table."""
    if args.plot:
        plot(args.plot, args.out)
        print(markdown_table(args.plot))
        return 0
    if args.merge:
        _write(args.out, merge(args.merge))
        return 0
    run(args, command)
    return 0


def main(argv: list[str] | None = None) -> int:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    return execute(parser.parse_args(argv), "python -m training.robustness " + " ".join(argv))


if __name__ == "__main__":
    raise SystemExit(main())
