"""The training subproject's ``trustgc`` subcommands: train, evaluate, calibrate, ood, corrupt,
report, attack and robustness.

One decorated function per subcommand (see :mod:`trustgc_cli.registry`); each ``run`` imports
its implementation when called, so declaring them imports neither torch nor the trainer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trustgc_cli.options import add_options, options_from_args
from trustgc_cli.registry import CommandGroup, Subparsers

__all__ = ["COMMANDS"]

COMMANDS = CommandGroup("training")


# ------------------------------------------------------------------------------------ train


@COMMANDS.command
def add_train(commands: Subparsers) -> None:
    from training.train_options import TrainOptions  # light: pydantic only

    parser = commands.add_parser("train", help="train an IB-INN or the CNN baseline")
    add_options(parser, TrainOptions, exclude=("command",))
    parser.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from training.train_options import TrainOptions
    from training.trainer import train

    metrics = train(options_from_args(TrainOptions, args))
    if metrics:
        print(json.dumps(metrics, indent=2))
    return 0


# --------------------------------------------------------------------------------- evaluate


@COMMANDS.command
def add_evaluate(commands: Subparsers) -> None:
    parser = commands.add_parser("evaluate", help="test metrics of a model artifact")
    parser.add_argument("--model", type=Path, required=True, help="model artifact directory")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, help="evaluate the first N test images only")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_artifact

    metrics = evaluate_artifact(args.model, args.data_dir, args.device, args.limit)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        width = max(len(key) for key in metrics)
        for key, value in metrics.items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            print(f"{key:<{width}}  {shown}")
    return 0


# -------------------------------------------------------------------------------- calibrate


@COMMANDS.command
def add_calibrate(commands: Subparsers) -> None:
    parser = commands.add_parser("calibrate", help="fit the p-value references of a model")
    parser.add_argument("--model", type=Path, required=True, help="model artifact directory")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--ood-alpha", type=float, default=0.01)
    parser.add_argument("--attack-alpha", type=float, default=0.01)
    parser.add_argument(
        "--interpolation",
        choices=("step", "linear"),
        default="step",
        help="p-values: exact conservative steps, or the continuous linear envelope above them",
    )
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(run=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    from training.calibrate import calibrate_artifact

    calibration = calibrate_artifact(
        args.model,
        args.data_dir,
        args.ood_alpha,
        args.attack_alpha,
        args.device,
        interpolation=args.interpolation,
    )
    print(f"wrote {args.model / 'calibration.json'}: {calibration.split}")
    return 0


# -------------------------------------------------------------------------------------- ood


@COMMANDS.command
def add_ood(commands: Subparsers) -> None:
    parser = commands.add_parser("ood", help="OoD detection ROC-AUC per OoD set")
    parser.add_argument("--model", type=Path, required=True, help="model artifact directory")
    parser.add_argument(
        "--ood",
        help="comma-separated OoD sets (default: every set training/ood.py defines; an unknown "
        "name is refused with the list)",
    )
    parser.add_argument(
        "--ood-dir",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also evaluate a folder of image files as OoD set NAME (repeatable)",
    )
    parser.add_argument("--limit", type=int, default=2000, help="images per OoD set")
    parser.add_argument(
        "--data-root", type=Path, help="folder with mnist/, notmnist/, cifar10/ ($TRUSTGC_DATA)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", type=Path, help="also write the JSON report to this file")
    parser.set_defaults(run=run_ood)


def ood_set_names(text: str | None) -> list[str]:
    """The sets named in ``--ood``, else every set of the OoD registry (training/ood.py is the
    one list of them; imported here, when the command runs, since it imports torch)."""
    from training.ood import OOD_SETS

    if text is None:
        return list(OOD_SETS)
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in OOD_SETS]
    if unknown:
        raise ValueError(f"unknown OoD set(s) {unknown}; known: {', '.join(OOD_SETS)}")
    return names


def run_ood(args: argparse.Namespace) -> int:
    """Every set through the served decoding path (training/ood.py); table or JSON."""
    from training.ood import OodOptions, evaluate_ood, format_table, parse_ood_dir

    options = OodOptions(
        model=args.model,
        sets=tuple(ood_set_names(args.ood)),
        ood_dirs=dict(parse_ood_dir(text) for text in args.ood_dir),
        limit=args.limit,
        data_root=args.data_root,
        seed=args.seed,
    )
    result = evaluate_ood(options)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(format_table(result))
    for alpha, row in result["in_distribution"]["rejection"].items():
        low, high = row["interval_99"]
        print(
            f"in-distribution rejection at alpha={alpha}: {row['rate']:.4f} "
            f"(99% interval {low:.4f}-{high:.4f}, inside: {row['inside']})"
        )
    return 0


# ---------------------------------------------------------------------------------- corrupt


@COMMANDS.command
def add_corrupt(commands: Subparsers) -> None:
    parser = commands.add_parser(
        "corrupt", help="write a corrupted copy of a data set (Hendrycks-Dietterich types)"
    )
    parser.add_argument("--input-set", default="fashion_mnist", help="data set name")
    parser.add_argument("--split", default="test", help="train or test")
    parser.add_argument(
        "--type", required=True, help="corruption type, e.g. fog (see training/corruptions.py)"
    )
    parser.add_argument("--severity", type=int, required=True, help="1 (mild) to 5 (severe)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="corrupt the first N images only")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="output .npz file")
    parser.set_defaults(run=run_corrupt)


def run_corrupt(args: argparse.Namespace) -> int:
    import numpy as np

    from training.corruptions import corrupt
    from training.data import load_dataset

    dataset = load_dataset(args.input_set, args.split, args.data_dir)
    if args.limit is not None:
        dataset = dataset.subset(np.arange(min(args.limit, len(dataset))))
    images = corrupt(dataset.images, args.type, args.severity, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        images=images,
        labels=dataset.labels,
        class_names=np.array(dataset.class_names),
        corruption=np.array(args.type),
        severity=np.array(args.severity),
        seed=np.array(args.seed),
        source=np.array(f"{args.input_set}/{args.split}"),
    )
    change = np.abs(images.astype(np.float64) - dataset.images).mean()
    print(f"wrote {args.out}: {len(images)} images, mean |change| {change:.2f} grey levels")
    return 0


# ----------------------------------------------------------------------------------- report

#: ``trustgc report`` flags that override a field of ``training.report.ReportOptions`` of the
#: same name (tests/test_cli.py checks each one against the dataclass).
REPORT_OVERRIDES = ("n_test", "n_corrupt", "n_ood", "attack_n", "attack_steps", "attack_rounds")


@COMMANDS.command
def add_report(commands: Subparsers) -> None:
    parser = commands.add_parser(
        "report", help="trustworthiness report (paper Sec. 4.1-4.3 analogs) as markdown + PNG"
    )
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="IB-INN artifacts")
    parser.add_argument("--baseline", type=Path, help="discriminative baseline artifact")
    parser.add_argument("--out", type=Path, default=Path("docs/report"))
    parser.add_argument("--quick", action="store_true", help="tiny subsets: a pipeline check")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/report"))
    parser.add_argument("--n-test", type=int, help="test images (default: all)")
    parser.add_argument("--n-corrupt", type=int, help="images per corruption and severity")
    parser.add_argument("--n-ood", type=int, help="images per OoD set")
    parser.add_argument("--attack-betas", help="comma-separated betas to attack (default: all)")
    parser.add_argument("--attack-n", type=int, help="images attacked per setting")
    parser.add_argument("--attack-steps", type=int, help="Adam steps per round")
    parser.add_argument("--attack-rounds", type=int, help="binary-search rounds over c")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, help="in-distribution data directory")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    import shlex
    from dataclasses import replace

    from training.report import ReportOptions, build_report, quick_options

    options = ReportOptions(work_dir=args.work_dir, threads=args.threads, seed=args.seed)
    if args.quick:
        options = quick_options(options)
    given = {name: getattr(args, name) for name in REPORT_OVERRIDES}
    if args.attack_betas:
        given["attack_betas"] = tuple(b.strip() for b in args.attack_betas.split(",") if b)
    words = ["trustgc", "report", "--models", *map(str, args.models)]
    for flag, value in (("--baseline", args.baseline), ("--out", args.out)):
        words += [flag, str(value)] if value is not None else []
    words += ["--quick"] if args.quick else []
    for key, value in given.items():
        if value is not None:
            text = ",".join(value) if isinstance(value, tuple) else str(value)
            words += [f"--{key.replace('_', '-')}", text]
    options = replace(
        options,
        **{k: v for k, v in given.items() if v is not None},
        data_dir=args.data_dir,
        progress=not args.no_progress,
        command=shlex.join(words),
    )
    results = build_report(args.models, args.baseline, args.out, options)
    minutes = results["runtime"]["wall_seconds_this_run"] / 60
    print(f"wrote {args.out / 'README.md'} in {minutes:.1f} min")
    return 0


# ----------------------------------------------------------------------------------- attack


@COMMANDS.command
def add_attack(commands: Subparsers) -> None:
    from training.attack_options import add_attack_arguments  # light: no torch

    parser = commands.add_parser("attack", help="Carlini-Wagner attacks and their detection")
    add_attack_arguments(parser)  # one set of options for `trustgc attack` and the module
    parser.set_defaults(run=run_attack)


def run_attack(args: argparse.Namespace) -> int:
    from training.attack_eval import run

    run(args, "trustgc " + " ".join(sys.argv[1:]))
    print(f"wrote {args.out}")
    return 0


# ------------------------------------------------------------------------------- robustness


@COMMANDS.command
def add_robustness(commands: Subparsers) -> None:
    from training.robustness import add_arguments  # light: torch is imported when it runs

    parser = commands.add_parser(
        "robustness", help="robustness curves under the adaptive attack suite (served decision)"
    )
    add_arguments(parser)  # one set of options for `trustgc robustness` and the module
    parser.set_defaults(run=run_robustness)


def run_robustness(args: argparse.Namespace) -> int:
    from training.robustness import execute

    return execute(args, "trustgc " + " ".join(sys.argv[1:]))
