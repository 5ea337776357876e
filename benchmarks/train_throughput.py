"""Training throughput: ``trustgc train``'s loop against a bare step of the same model.

    .venv/bin/python benchmarks/train_throughput.py                       # CPU, fashion_mnist
    .venv/bin/python benchmarks/train_throughput.py --device cuda --batch-sizes 128,512

The bare step is the least any trainer must do per batch: forward (``model.score``), the IB loss,
backward and an AdamW step, on a batch already on the device.  The trainer adds what training
needs around it: the epoch's index gather, augmentation (flip, crop), dequantisation noise,
gradient clipping and the statistics it logs.  Their ratio is the trainer's overhead.

The trainer is timed as a whole run of :func:`training.trainer.train` (data loading, model
construction, writing the artifact included), twice: with ``--warmup`` steps and with
``--warmup + --steps`` steps; the difference is the time of ``--steps`` steady-state steps, so
set-up and first-step costs cancel.  The bare step is timed over ``--steps`` steps after the
same warm-up.  Keep ``--warmup + --steps`` within the first epoch (fashion_mnist: 429 steps of
128): an epoch's end adds a checkpoint write to the long run only.  Rounds alternate trainer
and bare step so that load from other processes hits both alike, and the median round is
reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "benchmarks")]

from machine import cpu_name, load_average  # noqa: E402

from training.config import load_training_config  # noqa: E402
from training.loss import ib_loss  # noqa: E402
from training.train_options import TrainOptions  # noqa: E402
from training.trainer import train  # noqa: E402
from trustgc.artifact import build_model  # noqa: E402
from trustgc.config import load_model_config  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_step_seconds(config: str, batch: int, steps: int, warmup: int, device: str) -> float:
    """Seconds for ``steps`` bare forward/backward/AdamW steps (after ``warmup`` untimed)."""
    training = load_training_config(config)
    model_config = load_model_config(config)
    target = torch.device(device)
    torch.manual_seed(0)
    model = build_model(model_config).to(target).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=training.lr, weight_decay=training.weight_decay
    )
    spec = model_config.input
    x = torch.rand(batch, spec.channels, spec.height, spec.width, device=target)
    labels = torch.randint(0, model_config.num_classes, (batch,), device=target)

    def step() -> None:
        scores = model.score(x)
        loss = ib_loss(scores, labels, training.beta, training.label_smoothing).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(target)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(target)
    return time.perf_counter() - started


def trainer_seconds(config: str, batch: int, steps: int, warmup: int, device: str) -> float:
    """Seconds the trainer spends on ``steps`` steps: a long run minus a short one."""

    def run(max_steps: int) -> float:
        with tempfile.TemporaryDirectory() as out:
            options = TrainOptions(
                config=config,
                out=Path(out) / "run",
                batch_size=batch,
                max_steps=max_steps,
                device=device,
                evaluate=False,
                progress=False,
                command="benchmarks/train_throughput.py",
            )
            started = time.perf_counter()
            train(options)
            _sync(torch.device(device))
            return time.perf_counter() - started

    return run(warmup + steps) - run(warmup)


def measure(args: argparse.Namespace) -> list[dict]:
    rows = []
    for batch in args.batch_sizes:
        trainer, bare = [], []
        for _ in range(args.rounds):
            trainer.append(
                trainer_seconds(args.config, batch, args.steps, args.warmup, args.device)
            )
            bare.append(bare_step_seconds(args.config, batch, args.steps, args.warmup, args.device))
        images = batch * args.steps
        row = {
            "device": args.device,
            "batch_size": batch,
            "trainer_images_per_s": images / statistics.median(trainer),
            "bare_images_per_s": images / statistics.median(bare),
            "rounds": {"trainer_s": trainer, "bare_s": bare},
        }
        row["trainer_over_bare"] = row["trainer_images_per_s"] / row["bare_images_per_s"]
        rows.append(row)
        print(
            f"{args.device} batch {batch}: trainer {row['trainer_images_per_s']:.0f} img/s, "
            f"bare step {row['bare_images_per_s']:.0f} img/s "
            f"({row['trainer_over_bare']:.2f}x)",
            flush=True,
        )
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Config `{meta['config']}`, {meta['steps']} timed steps after {meta['warmup']} warm-up "
        f"steps, median of {meta['rounds']} alternating rounds; {meta['hardware']}, "
        f"{meta['threads']} torch threads, load average {meta['load_before']:.2f} before / "
        f"{meta['load_after']:.2f} after; torch {meta['torch']}.",
        "",
        "| device | batch | trainer (img/s) | bare step (img/s) | trainer / bare |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['device']} | {r['batch_size']} | {r['trainer_images_per_s']:.0f} | "
        f"{r['bare_images_per_s']:.0f} | {r['trainer_over_bare']:.2f} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="fashion_mnist", help="config name or JSON path")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
    )
    parser.add_argument(
        "--batch-sizes",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[128],
        help="comma-separated batch sizes (default: the config's 128)",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="write the rows and machine facts as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    hardware = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else cpu_name()
    meta = {
        "config": args.config,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "hardware": hardware,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_before": load_average(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    rows = measure(args)
    meta["load_after"] = load_average()
    print(markdown(rows, meta))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
