"""The serving subproject's ``trustgc`` subcommands: archive, serve, start, stop and classify.

One decorated function per subcommand (see :mod:`trustgc_cli.registry`); each ``run`` imports
its implementation when called, so ``classify`` works on a client-only install (no torch, no
TorchServe) and ``trustgc --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trustgc_cli.registry import CommandGroup, Subparsers

__all__ = ["COMMANDS"]

COMMANDS = CommandGroup("serving")

RUNTIMES = ("torchserve", "kserve")
# Each runtime's client defaults: REST URL, gRPC target, key file.
CLIENT_DEFAULTS = {
    "torchserve": (
        "http://127.0.0.1:8080",
        "127.0.0.1:7070",
        Path(".run/torchserve/key_file.json"),
    ),
    "kserve": ("http://127.0.0.1:8090", "127.0.0.1:8091", Path(".run/kserve/key_file.json")),
}
SERVER_COMMANDS = {
    "serve": "run TorchServe in the foreground (Ctrl-C stops it)",
    "start": "start TorchServe in the background",
    "stop": "stop a running TorchServe",
}


@COMMANDS.command
def add_archive(commands: Subparsers) -> None:
    parser = commands.add_parser("archive", help="build model_store/NAME.mar for TorchServe")
    parser.add_argument("--model", type=Path, default=Path("model_store/fashion_mnist"))
    parser.add_argument("--export-path", type=Path, default=Path("model_store"))
    parser.add_argument("--name", help="archive and model name (default: the model's name)")
    parser.add_argument(
        "--version", help="archive and served version (default: the artifact's model.json)"
    )
    parser.add_argument(
        "--model-config",
        type=Path,
        help="TorchServe model-config yaml (default: deploy/torchserve/model-config.yaml of the "
        "project directory: $TRUSTGC_HOME, the source checkout, or the working directory)",
    )
    parser.set_defaults(run=run_archive)


def run_archive(args: argparse.Namespace) -> int:
    from serving.archive import build_archive

    archive = build_archive(
        args.model, args.export_path, args.name, args.model_config, version=args.version
    )
    print(f"wrote {archive}")
    return 0


@COMMANDS.command
def add_server(commands: Subparsers) -> None:
    for name, text in SERVER_COMMANDS.items():
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
        parser.add_argument(
            "--runtime",
            choices=RUNTIMES,
            default="torchserve",
            help="TorchServe (REST 8080, gRPC 7070) or KServe's model server on the Open "
            "Inference Protocol (REST 8090, gRPC 8091); see docs/serving.md",
        )
        parser.add_argument(
            "--run-dir",
            type=Path,
            help="where the server keeps its config, logs, key file and pid (default: .run/"
            "torchserve of the project directory); one server per run directory",
        )
        if name != "stop":
            parser.add_argument(
                "--no-certify-registration",
                action="store_true",
                help="TorchServe: do not register NAME_certify (batch size 1, one worker) beside "
                "each model; certify requests are then refused (docs/serving.md)",
            )
            parser.add_argument(
                "--model",
                action="append",
                metavar="DIR[=NAME]",
                help="serve this model artifact under NAME (default: the directory's name); "
                "repeat for several; archived as needed (default: model_store/fashion_mnist.mar)",
            )
        parser.set_defaults(run=run_server)


def server_settings(args: argparse.Namespace):
    """The launcher's settings from the flags (the rest: ServerSettings' documented defaults)."""
    from serving.server import ServerSettings, parse_model_spec

    settings = ServerSettings(
        auth=not args.no_auth,
        host=args.host,
        certify_registration=not getattr(args, "no_certify_registration", False),
    )
    if args.model_store:
        settings.model_store = args.model_store
    if getattr(args, "run_dir", None):
        settings.run_dir = args.run_dir
    if getattr(args, "model", None):
        settings.serve([parse_model_spec(text) for text in args.model])
    return settings


def run_server(args: argparse.Namespace) -> int:
    if getattr(args, "runtime", "torchserve") == "kserve":
        return run_kserve(args)
    from serving.server import run_foreground, start_background, stop_server

    settings = server_settings(args)
    if args.command == "serve":
        return run_foreground(settings)
    if args.command == "start":
        return start_background(settings)
    return stop_server(settings)


def run_kserve(args: argparse.Namespace) -> int:
    """serve/start/stop for the KServe runtime (serving.kserve_control)."""
    from serving import kserve_control
    from serving.kserve_runtime import KServeSettings

    settings = KServeSettings(auth=not args.no_auth, host=args.host)
    if args.model_store:
        settings.model_dir = Path(args.model_store) / settings.model_name
    if getattr(args, "model", None):
        from serving.server import parse_model_spec

        if len(args.model) > 1:
            raise ValueError("the kserve runtime serves one model: give one --model DIR[=NAME]")
        spec = parse_model_spec(args.model[0])
        settings.model_dir, settings.model_name = spec.directory, spec.name
    action = {
        "serve": kserve_control.run_foreground,
        "start": kserve_control.start_background,
        "stop": kserve_control.stop,
    }[args.command]
    return action(settings)


@COMMANDS.command
def add_classify(commands: Subparsers) -> None:
    parser = commands.add_parser("classify", help="classify image files with a running server")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--grpc", action="store_true", help="use gRPC instead of REST")
    parser.add_argument("--json", action="store_true", help="print the JSON answers")
    parser.add_argument("--explain", action="store_true", help="ask for the explanation")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="with --explain: write per image a PNG (input, top-3 posterior heatmaps, p-values "
        "against alpha) into DIR",
    )
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument(
        "--certify",
        type=int,
        default=0,
        metavar="N",
        help="also ask for a randomized-smoothing certificate from N noisy copies (the server "
        "caps N: max_certify_samples, 1000 by default; ~1 s per image at 1000); on TorchServe "
        "sent to the model's certify registration, MODEL_certify",
    )
    parser.add_argument(
        "--sigma", type=float, default=0.25, help="noise level of --certify ([0, 1] pixels)"
    )
    parser.add_argument("--model", default="fashion_mnist")
    parser.add_argument(
        "--runtime", choices=RUNTIMES, default="torchserve", help="the server's protocol"
    )
    parser.add_argument("--url", help="REST URL (default: the runtime's, 8080 or 8090)")
    parser.add_argument("--grpc-target", help="gRPC target (default: the runtime's)")
    parser.add_argument("--token", help="inference key (default: $TRUSTGC_TOKEN or key file)")
    parser.add_argument("--key-file", type=Path, help="default: .run/<runtime>/key_file.json")
    parser.set_defaults(run=run_classify)


def _started_key_file(default: Path) -> Path:
    """The key file of a server started here, else of one started in the project directory
    (``trustgc start`` writes it to the project's ``.run/``, wherever it was run from)."""
    from serving import paths

    return default if default.is_file() else paths.project_dir() / default


def _certified(certificate) -> str:
    """The classify table's certificate column: the smoothed label and its radius."""
    if certificate is None:
        return ""
    label = certificate.label if certificate.label is not None else "abstained"
    return f"  {label} ({certificate.radius:.3f})"


def run_classify(args: argparse.Namespace) -> int:
    from serving.client import ClassifierClient, ClientError, resolve_token
    from serving.files import collect_files
    from serving.pictures import file_pixels, picture_paths, write_picture
    from serving.schema import ErrorResponse

    if args.out and not args.explain:
        raise ValueError("--out DIR writes explanation pictures: add --explain")
    files = collect_files(args.images)  # a directory: its images; go on past bad files
    if not files:
        raise ValueError(f"no image files in {', '.join(map(str, args.images))}")
    url, target, key_file = CLIENT_DEFAULTS[getattr(args, "runtime", "torchserve")]
    kind = ClassifierClient
    if getattr(args, "runtime", "torchserve") == "kserve":
        from serving.oip_client import OipClient as kind
    client = kind(
        model=args.model,
        http_url=args.url or url,
        grpc_target=args.grpc_target or target,
        token=resolve_token(args.token, args.key_file or _started_key_file(key_file)),
    )
    pictures = picture_paths(files, args.out) if args.out else None
    failures = written = 0
    certified_column = f"  {'certified (L2 radius)':<24}" if args.certify else ""
    if not args.json:
        print(
            f"{'image':<28}{'decision':<16}{'prediction':<16}{'prob.':>7}{'OoD p':>9}"
            f"{'attack p':>10}{'bits/dim':>10}{certified_column}"
        )
    for index, path in enumerate(files):
        try:
            data = path.read_bytes()
            answer = client.classify(
                data,
                explain=args.explain,
                top_k=args.top_k,
                use_grpc=args.grpc,
                certify=args.certify,
                certify_sigma=args.sigma,
            )
        except (OSError, ClientError) as error:  # unreadable file; 413 and other HTTP answers
            message = error.strerror if isinstance(error, OSError) else str(error)
            print(f"{path.name:<28}error: {message or error}", file=sys.stderr)
            failures += 1
            continue
        if args.json:
            print(answer.model_dump_json(exclude_none=True, indent=2))
        elif isinstance(answer, ErrorResponse):
            print(f"{path.name:<28}error: {answer.error.code}: {answer.error.message}")
        else:
            print(
                f"{path.name:<28}{answer.decision:<16}{answer.prediction.label:<16}"
                f"{answer.prediction.probability:>7.3f}{answer.typicality.p_value:>9.4f}"
                f"{answer.attack.p_value:>10.4f}{answer.log_likelihood.bits_per_dim:>10.3f}"
                f"{_certified(answer.certificate)}"
            )
        failures += isinstance(answer, ErrorResponse)
        if pictures is not None and not isinstance(answer, ErrorResponse):
            write_picture(file_pixels(data), answer, pictures[index])
            written += 1
    if pictures is not None:
        print(
            f"wrote {written} pictures to {args.out}", file=sys.stderr if args.json else sys.stdout
        )
    return 1 if failures else 0


@COMMANDS.command
def add_score(commands: Subparsers) -> None:
    parser = commands.add_parser(
        "score", help="the served answer for every image file, without a server (offline)"
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILES|DIR")
    parser.add_argument("--model", type=Path, required=True, help="model artifact directory")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="results file (.jsonl: whole answers, or .csv), or a directory (results.jsonl "
        "inside); --explain puts the pictures in the directory, or beside a results file in the "
        "folder named after it (results.jsonl -> results/)",
    )
    parser.add_argument("--name", help="model name in the answers (default: the artifact's)")
    parser.add_argument("--top-k", type=int, help="classes per answer (default: the server's)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images per forward pass (1: bit-identical to a sequential client's answers)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="answers with explanations, and per image a PNG (input, top-3 posterior heatmaps, "
        "p-values against alpha)",
    )
    parser.add_argument(
        "--certify",
        type=int,
        metavar="N",
        help="also certify each image by randomized smoothing with N noisy copies (plus 100 "
        "to choose the class): the smoothed label and the L2 radius it provably keeps with "
        "probability >= 1 - 0.001 (costs N + 100 forward passes per image)",
    )
    parser.add_argument(
        "--sigma", type=float, default=0.25, help="noise level of --certify ([0, 1] pixels)"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run_score)


def run_score(args: argparse.Namespace) -> int:
    from serving.offline import CertifyOptions, resolve_out, score_files

    certify = CertifyOptions(n=args.certify, sigma=args.sigma) if args.certify else None
    counts = score_files(
        args.inputs,
        args.model,
        args.out,
        name=args.name,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        top_k=args.top_k,
        explain=args.explain,
        certify=certify,
    )
    results, pictures = resolve_out(args.out)
    print(f"wrote {results}: {counts['rows']} rows, {counts['errors']} errors")
    if args.explain:
        print(f"wrote {counts['pictures']} pictures to {pictures}")
    return 0
