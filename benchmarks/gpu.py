"""GPU benchmark: the paper's ImageNet IB-INN against ResNet-50, side by side in one run.

Self-contained: run on one CUDA GPU from the repository root (``python benchmarks/gpu.py``).
Random 224x224 inputs at batch 256; timing by CUDA events, median of repeats after warm-up;
inference (posteriors and likelihoods for the GC, logits for ResNet-50) and one SGD training
step (IB loss for the GC, cross-entropy for ResNet-50), in TF32 and in bf16 autocast.  Under
bf16 the GC's invertible stream, log-dets and likelihoods stay in fp32: only the coupling
subnets run in bf16 (see trustgc/layers/coupling.py and resampling.full_precision).  Also the
CIFAR-10 config's training throughput.  Writes JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from resnet import resnet50  # noqa: E402

from training.loss import ib_loss  # noqa: E402
from trustgc.config import load_model_config  # noqa: E402
from trustgc.ibinn import IBINN  # noqa: E402


def cuda_time_ms(step, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``step()`` measured with CUDA events (wall clock on CPU)."""
    for _ in range(warmup):
        step()
    if not torch.cuda.is_available():  # --dry-run on a CPU: check the code paths only
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


DEVICE = "cuda"


def _autocast(precision: str):
    return torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=precision == "bf16")


def gc_steps(model: IBINN, x, labels, precision: str, beta: float = 8.0):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def infer():
        with torch.inference_mode(), _autocast(precision):
            scores = model.score(x)
            return scores.log_posterior, scores.log_likelihood

    def train():
        with _autocast(precision):
            loss = ib_loss(model.score(x), labels, beta).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return infer, train


def classifier_steps(model: nn.Module, x, labels, precision: str):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def infer():
        with torch.inference_mode(), _autocast(precision):
            return model(x)

    def train():
        with _autocast(precision):
            loss = loss_fn(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return infer, train


def _peak_memory_gb() -> float:
    if not torch.cuda.is_available():
        return 0.0
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return peak


def run(batch: int, warmup: int, repeats: int, cifar_batch: int) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    device = torch.device(DEVICE)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, 3, 224, 224, device=device, generator=generator)
    labels = torch.randint(0, 1000, (batch,), device=device, generator=generator)
    gc = IBINN(load_model_config("imagenet")).to(device)
    reference = resnet50().to(device)
    reference_cl = resnet50().to(device).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    rows = []
    for precision in ("tf32", "bf16"):
        entries = {
            "imagenet IB-INN": gc_steps(gc, x, labels, precision),
            "ResNet-50": classifier_steps(reference, x, labels, precision),
            "ResNet-50 (channels_last)": classifier_steps(reference_cl, x_cl, labels, precision),
        }
        for name, (infer, train) in entries.items():
            infer_ms = cuda_time_ms(infer, warmup, repeats)
            train_ms = cuda_time_ms(train, warmup, repeats)
            rows.append(
                {
                    "model": name,
                    "precision": precision,
                    "batch": batch,
                    "inference_ms": infer_ms,
                    "inference_img_s": batch / infer_ms * 1e3,
                    "train_step_ms": train_ms,
                    "train_img_s": batch / train_ms * 1e3,
                    "peak_memory_gb": _peak_memory_gb(),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    cifar = IBINN(load_model_config("cifar10")).to(device)
    xc = torch.rand(cifar_batch, 3, 32, 32, device=device, generator=generator)
    yc = torch.randint(0, 10, (cifar_batch,), device=device, generator=generator)
    for precision in ("tf32", "bf16"):
        _, train = gc_steps(cifar, xc, yc, precision)
        ms = cuda_time_ms(train, warmup, repeats)
        rows.append(
            {
                "model": "cifar10 IB-INN",
                "precision": precision,
                "batch": cifar_batch,
                "train_step_ms": ms,
                "train_img_s": cifar_batch / ms * 1e3,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    parameters = {
        "imagenet IB-INN": sum(p.numel() for p in gc.parameters()),
        "imagenet IB-INN network": sum(p.numel() for p in gc.flow.parameters()),
        "ResNet-50": sum(p.numel() for p in reference.parameters()),
    }
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)",
        "torch": torch.__version__,
        "host": platform.node(),
        "rows": rows,
        "parameters": parameters,
        "repeats": repeats,
        "warmup": warmup,
    }


def table(result: dict) -> str:
    lines = [
        f"Device: {result['device']}, torch {result['torch']}; median of "
        f"{result['repeats']} repeats after {result['warmup']} warm-up steps.",
        "",
        "| model | precision | batch | inference img/s | train img/s | peak GB |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        inference = f"{row['inference_img_s']:.0f}" if "inference_img_s" in row else "-"
        memory = f"{row['peak_memory_gb']:.1f}" if "peak_memory_gb" in row else "-"
        lines.append(
            f"| {row['model']} | {row['precision']} | {row['batch']} | {inference} | "
            f"{row['train_img_s']:.0f} | {memory} |"
        )
    lines.append("")
    for precision in ("tf32", "bf16"):
        by = {r["model"]: r for r in result["rows"] if r["precision"] == precision}
        gc, rn = by["imagenet IB-INN"], by["ResNet-50"]
        lines.append(
            f"- {precision}: GC / ResNet-50 inference "
            f"{gc['inference_img_s'] / rn['inference_img_s']:.2f}x, training "
            f"{gc['train_img_s'] / rn['train_img_s']:.2f}x"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--cifar-batch", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("gpu_benchmark"))
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run every code path on the CPU at a tiny batch (no timings)",
    )
    args = parser.parse_args()
    global DEVICE
    if args.dry_run:
        DEVICE, args.batch, args.cifar_batch, args.warmup, args.repeats = "cpu", 2, 2, 0, 1
    elif not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (or --dry-run)", file=sys.stderr)
        return 2
    started = time.time()
    result = run(args.batch, args.warmup, args.repeats, args.cifar_batch)
    result["wall_seconds"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_benchmark.json").write_text(json.dumps(result, indent=2))
    (args.out / "gpu_benchmark.md").write_text(table(result))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
