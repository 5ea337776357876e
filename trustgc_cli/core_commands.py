"""The ``trustgc`` subcommands that need the core alone: export-onnx.

One decorated function per subcommand (see :mod:`trustgc_cli.registry`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trustgc_cli.registry import CommandGroup, Subparsers

__all__ = ["COMMANDS"]

COMMANDS = CommandGroup("core")


@COMMANDS.command
def add_export_onnx(commands: Subparsers) -> None:
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
    parser.set_defaults(run=run_export_onnx)


def run_export_onnx(args: argparse.Namespace) -> int:
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
