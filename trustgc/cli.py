"""The ``trustgc`` command line: one entry point, one subcommand per job.

Each subcommand imports its implementation lazily, so ``trustgc --help`` is fast and the core
package never imports the training subproject or a server at import time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

__all__ = ["main"]


def _beta(text: str) -> float:
    value = float(text)
    if value < 0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"beta must be >= 0 or inf, got {text}")
    return value


def _add_train(commands) -> None:
    parser = commands.add_parser("train", help="train an IB-INN or the CNN baseline")
    parser.add_argument("--config", default="fashion_mnist", help="config name or JSON path")
    parser.add_argument("--out", type=Path, required=True, help="model artifact directory")
    parser.add_argument("--beta", type=_beta, help="IB weight (inf: cross-entropy only)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--amp", action="store_true", default=None, help="bf16 autocast")
    parser.add_argument("--limit-train-samples", type=int)
    parser.add_argument("--data-dir", type=Path, help="data set directory (default per set)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument(
        "--time-budget-minutes",
        type=float,
        help="finish the LR schedule within this wall time (single process)",
    )
    parser.add_argument("--max-steps", type=int, help="stop after this many steps")
    parser.add_argument("--no-evaluate", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from training.trainer import TrainOptions, train

    options = TrainOptions(
        config=args.config,
        out=args.out,
        beta=args.beta,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        amp=args.amp,
        limit_train_samples=args.limit_train_samples,
        data_dir=args.data_dir,
        device=args.device,
        resume=args.resume,
        time_budget_minutes=args.time_budget_minutes,
        max_steps=args.max_steps,
        evaluate=not args.no_evaluate,
        progress=not args.no_progress,
    )
    metrics = train(options)
    if metrics:
        print(json.dumps(metrics, indent=2))
    return 0


def _add_evaluate(commands) -> None:
    parser = commands.add_parser("evaluate", help="test metrics of a model artifact")
    parser.add_argument("--model", type=Path, required=True, help="model artifact directory")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, help="evaluate the first N test images only")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
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


def _add_calibrate(commands) -> None:
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
    parser.set_defaults(run=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
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


OOD_SET_NAMES = (
    "mnist",
    "notmnist",
    "uniform_noise",
    "gaussian_noise",
    "constant",
    "vflip",
    "inverted",
)


def _add_ood(commands) -> None:
    parser = commands.add_parser("ood", help="OoD detection ROC-AUC per OoD set")
    parser.add_argument("--model", type=Path, required=True, help="model artifact directory")
    parser.add_argument(
        "--ood",
        default=",".join(OOD_SET_NAMES),
        help=f"comma-separated sets from {', '.join(OOD_SET_NAMES)}",
    )
    parser.add_argument("--limit", type=int, default=2000, help="images per OoD set")
    parser.add_argument("--data-dir", type=Path, help="in-distribution data directory")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=_run_ood)


def _run_ood(args: argparse.Namespace) -> int:
    from training.ood import evaluate_ood

    result = evaluate_ood(
        args.model, [s for s in args.ood.split(",") if s], args.limit, args.data_dir
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{'OoD set':<16}{'production':>12}{'paper 2-sided':>15}{'1-sided lik.':>14}"
        f"{'max-post.':>11}{'rejected':>10}"
    )
    for name, row in result["auc_percent"].items():
        print(
            f"{name:<16}{row['production']:>12.2f}{row['paper_two_sided']:>15.2f}"
            f"{row['one_sided_likelihood']:>14.2f}{row['max_posterior']:>11.2f}"
            f"{row['rejected_at_alpha']:>10.3f}"
        )
    for alpha, row in result["calibration"].items():
        low, high = row["interval_99"]
        print(
            f"in-distribution rejection at alpha={alpha}: {row['rejection_rate']:.4f} "
            f"(99% interval {low:.4f}-{high:.4f}, calibrated: {row['calibrated']})"
        )
    return 0


def _add_archive(commands) -> None:
    parser = commands.add_parser("archive", help="build model_store/NAME.mar for TorchServe")
    parser.add_argument("--model", type=Path, default=Path("model_store/fashion_mnist"))
    parser.add_argument("--export-path", type=Path, default=Path("model_store"))
    parser.add_argument("--name", help="archive and model name (default: the model's name)")
    parser.set_defaults(run=_run_archive)


def _run_archive(args: argparse.Namespace) -> int:
    from serving.archive import build_archive

    print(f"wrote {build_archive(args.model, args.export_path, args.name)}")
    return 0


def _add_export_onnx(commands) -> None:
    parser = commands.add_parser(
        "export-onnx", help="export the network f to DIR/model.onnx for the onnxruntime backend"
    )
    parser.add_argument("--model", type=Path, required=True, help="model artifact directory")
    parser.add_argument("--opset", type=int, help="ONNX opset (default 18)")
    parser.add_argument(
        "--exporter",
        choices=("auto", "dynamo", "torchscript"),
        default="auto",
        help="torch exporter (auto: dynamo, falling back to torchscript)",
    )
    parser.set_defaults(run=_run_export_onnx)


def _run_export_onnx(args: argparse.Namespace) -> int:
    from trustgc.onnx_backend import DEFAULT_OPSET, ONNX_FILE, ONNX_INFO_FILE, export_artifact

    info = export_artifact(args.model, args.opset or DEFAULT_OPSET, args.exporter)
    check = info["check"]
    print(
        f"wrote {args.model / ONNX_FILE} ({info['bytes'] / 1e6:.1f} MB, {info['exporter']} "
        f"exporter, opset {info['opset']}, {info['export_seconds']:.0f} s) and "
        f"{args.model / ONNX_INFO_FILE}; max |z_onnx - z_torch| = "
        f"{check['max_abs_latent_diff']:.2e}"
    )
    return 0


def _server_settings(args: argparse.Namespace):
    from serving.server import ServerSettings

    settings = ServerSettings(auth=not args.no_auth, host=args.host)
    if args.model_store:
        settings.model_store = args.model_store
    return settings


def _add_server(commands) -> None:
    for name, text in (
        ("serve", "run TorchServe in the foreground (Ctrl-C stops it)"),
        ("start", "start TorchServe in the background"),
        ("stop", "stop a running TorchServe"),
    ):
        parser = commands.add_parser(name, help=text)
        parser.add_argument(
            "--no-auth", action="store_true", help="turn token auth off (local experiments only)"
        )
        parser.add_argument("--model-store", type=Path)
        parser.add_argument(
            "--host",
            default="127.0.0.1",
            help="address to bind (default loopback; 0.0.0.0 only in a container)",
        )
        parser.set_defaults(run=_run_server)


def _run_server(args: argparse.Namespace) -> int:
    from serving.server import run_foreground, start_background, stop_server

    settings = _server_settings(args)
    if args.command == "serve":
        return run_foreground(settings)
    if args.command == "start":
        return start_background(settings)
    return stop_server(settings)


def _add_classify(commands) -> None:
    parser = commands.add_parser("classify", help="classify image files with a running server")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--grpc", action="store_true", help="use gRPC instead of REST")
    parser.add_argument("--json", action="store_true", help="print the JSON answers")
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--model", default="fashion_mnist")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--grpc-target", default="127.0.0.1:7070")
    parser.add_argument("--token", help="inference key (default: $TRUSTGC_TOKEN or key file)")
    parser.add_argument("--key-file", type=Path, default=Path(".run/torchserve/key_file.json"))
    parser.set_defaults(run=_run_classify)


def _run_classify(args: argparse.Namespace) -> int:
    from serving.client import ClassifierClient, resolve_token
    from serving.schema import ErrorResponse

    client = ClassifierClient(
        model=args.model,
        http_url=args.url,
        grpc_target=args.grpc_target,
        token=resolve_token(args.token, args.key_file),
    )
    failures = 0
    if not args.json:
        print(
            f"{'image':<28}{'decision':<16}{'prediction':<16}{'prob.':>7}{'OoD p':>9}"
            f"{'attack p':>10}{'bits/dim':>10}"
        )
    for path in args.images:
        answer = client.classify(
            path.read_bytes(), explain=args.explain, top_k=args.top_k, use_grpc=args.grpc
        )
        if args.json:
            print(answer.model_dump_json(exclude_none=True, indent=2))
        elif isinstance(answer, ErrorResponse):
            print(f"{path.name:<28}error: {answer.error.code}: {answer.error.message}")
        else:
            print(
                f"{path.name:<28}{answer.decision:<16}{answer.prediction.label:<16}"
                f"{answer.prediction.probability:>7.3f}{answer.typicality.p_value:>9.4f}"
                f"{answer.attack.p_value:>10.4f}{answer.log_likelihood.bits_per_dim:>10.3f}"
            )
        failures += isinstance(answer, ErrorResponse)
    return 1 if failures else 0


def _add_corrupt(commands) -> None:
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
    parser.set_defaults(run=_run_corrupt)


def _run_corrupt(args: argparse.Namespace) -> int:
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


def _add_report(commands) -> None:
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
    parser.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    import shlex
    from dataclasses import replace

    from training.report import ReportOptions, build_report, quick_options

    options = ReportOptions(work_dir=args.work_dir, threads=args.threads, seed=args.seed)
    if args.quick:
        options = quick_options(options)
    given = {
        "n_test": args.n_test,
        "n_corrupt": args.n_corrupt,
        "n_ood": args.n_ood,
        "attack_n": args.attack_n,
        "attack_steps": args.attack_steps,
        "attack_rounds": args.attack_rounds,
    }
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


def _add_attack(commands) -> None:
    from training.attack_options import add_attack_arguments  # light: no torch

    parser = commands.add_parser("attack", help="Carlini-Wagner attacks and their detection")
    add_attack_arguments(parser)  # one set of options for `trustgc attack` and the module
    parser.set_defaults(run=_run_attack)


def _run_attack(args: argparse.Namespace) -> int:
    from training.attack_eval import run

    run(args, "trustgc " + " ".join(sys.argv[1:]))
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trustgc", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands)
    _add_evaluate(commands)
    _add_calibrate(commands)
    _add_ood(commands)
    _add_attack(commands)
    _add_archive(commands)
    _add_export_onnx(commands)
    _add_server(commands)
    _add_classify(commands)
    _add_corrupt(commands)
    _add_report(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, TimeoutError, ConnectionError) as error:
        print(f"trustgc {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # client/server failures: a message, not a traceback
        if type(error).__module__.split(".")[0] not in {"serving", "requests", "grpc"}:
            raise
        print(f"trustgc {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
