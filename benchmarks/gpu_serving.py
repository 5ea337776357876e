"""GPU serving benchmark: the shipped model's Predictor.score on a GPU beside the served CPU path.

Self-contained: run from the repository root on one CUDA GPU (``python benchmarks/gpu_serving.py
--out gpu_serving.json``); it needs numpy, torch, pydantic, safetensors, pillow and onnxruntime,
nothing that serves (no TorchServe, Java or KServe).  What it measures, on the shipped
Fashion-MNIST artifact (``model_store/fashion_mnist``, background flow included):

- ``Predictor.score`` with backend torch on CUDA at batch sizes 1 to 8192, timed with CUDA
  events (median after warm-up), and split into its device part (``model_outputs``: upload, the
  flow and the background flow, download) and its host part (the statistics, among them one PNG
  encoding per image, and the p-values' binary searches);
- the same ``Predictor.score`` on the CPU as served (one thread, batch 64), with onnxruntime
  (the served default) and with torch, for the GPU / CPU ratio;
- the CPU cost per image that a GPU server still pays outside the model: decoding PNG bytes
  (``serving.decode.decode_image``) and building the answer (``serving.responses.build_response``
  and its JSON encoding as the handler writes it);
- whether the CUDA predictor holds every parameter and buffer on the device and how far its
  answers differ from the CPU's on the same images.

Inputs: the two example images in ``docs/examples`` and their mirror images, each shifted by a
random offset, tiled to the largest batch (the work per image does not depend on its content
except for the PNG encoder's, which these garment- and digit-like images exercise as served
images do).  ``--dry-run`` runs every path on the CPU at tiny sizes (no meaningful timings).
Prints a markdown table last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from serving.decode import decode_image  # noqa: E402
from serving.responses import build_response  # noqa: E402
from trustgc.inference import model_outputs  # noqa: E402
from trustgc.trust.predictor import Predictor  # noqa: E402
from trustgc.trust.statistics import compute_statistics, png_encode  # noqa: E402

GPU_BATCHES = (1, 8, 32, 128, 512, 2048, 8192)
CPU_BATCH = 64
EXAMPLES = ("ankle_boot.png", "mnist_digit_7.png")


def time_ms(step: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``step()``: CUDA events on a CUDA device, wall clock otherwise."""
    for _ in range(warmup):
        step()
    times = []
    if device.type != "cuda":
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize(device)
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sample_images(count: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """``count`` uint8 images (N, C, H, W): the examples, decoded as served, mirrored, shifted."""
    channels, height, width = shape
    bases = []
    for name in EXAMPLES:
        image = decode_image(
            (REPO / "docs" / "examples" / name).read_bytes(), height, width, channels
        )
        bases += [image, image[:, :, ::-1]]
    rng = np.random.default_rng(seed)
    images = np.empty((count, channels, height, width), dtype=np.uint8)
    for i in range(count):
        shift = rng.integers(-2, 3, size=2)
        images[i] = np.roll(bases[i % len(bases)], tuple(shift), axis=(1, 2))
    return images


def png_bytes(images: np.ndarray) -> list[bytes]:
    """Each (C, H, W) uint8 image as PNG bytes (grayscale for C=1, RGB for C=3)."""
    return [png_encode(image) for image in images]


def devices_of(predictor: Predictor) -> list[str]:
    """Every device that holds a parameter or buffer of the flow, its head or the background."""
    modules = [predictor.model, predictor.model.head]
    if predictor.background is not None:
        modules.append(predictor.background)
    found = set()
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            found.add(str(tensor.device))
    return sorted(found)


def score_row(predictor: Predictor, pixels: np.ndarray, warmup: int, repeats: int) -> dict:
    """Predictor.score at batch len(pixels), and its device and host parts."""
    batch, device = len(pixels), predictor.device
    names = tuple(sorted(predictor.calibration.components))
    outputs = model_outputs(
        predictor.model, torch.from_numpy(pixels), batch, device, False, predictor.background
    )

    def host() -> object:
        return predictor.p_values(compute_statistics(outputs, pixels, names))

    score_ms = time_ms(lambda: predictor.score(pixels, batch_size=batch), device, warmup, repeats)
    forward_ms = time_ms(
        lambda: model_outputs(
            predictor.model, torch.from_numpy(pixels), batch, device, False, predictor.background
        ),
        device,
        warmup,
        repeats,
    )
    host_ms = time_ms(host, torch.device("cpu"), warmup, repeats)
    return {
        "device": str(device),
        "backend": predictor.backend,
        "batch": batch,
        "score_ms": score_ms,
        "score_img_s": batch / score_ms * 1e3,
        "forward_ms": forward_ms,
        "host_ms": host_ms,
        "host_us_per_image": host_ms / batch * 1e3,
    }


def parity(gpu: Predictor, cpu: Predictor, pixels: np.ndarray) -> dict:
    """How far the GPU predictor's answers lie from the CPU torch predictor's on the same images."""
    a, b = gpu.score(pixels, batch_size=len(pixels)), cpu.score(pixels, batch_size=len(pixels))
    return {
        "images": len(pixels),
        "max_abs_log_posterior": float(np.max(np.abs(a.log_posterior - b.log_posterior))),
        "max_abs_bits_per_dim": float(np.max(np.abs(a.bits_per_dim - b.bits_per_dim))),
        "max_abs_ood_p_value": float(np.max(np.abs(a.ood_p_value - b.ood_p_value))),
        "decisions_equal": float(np.mean(a.decisions == b.decisions)),
    }


def per_image_us(step: Callable[[object], object], items: list, rounds: int) -> float:
    """Median over ``rounds`` passes (after one untimed pass) of the microseconds per item of
    ``step(item)``."""
    for item in items:
        step(item)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            step(item)
        times.append((time.perf_counter() - start) / len(items) * 1e6)
    return statistics.median(times)


def host_costs(predictor: Predictor, images: np.ndarray, rounds: int) -> dict:
    """CPU microseconds per image outside the model: decode PNG bytes, build and encode answers."""
    channels, height, width = predictor.input_shape
    manifest = predictor.manifest
    served = png_bytes(images)
    photos = png_bytes(
        np.random.default_rng(1).integers(0, 256, (max(1, len(images) // 8), 3, 224, 224), np.uint8)
    )
    results = predictor.predict(images)

    def build(result) -> object:
        return build_response(result, manifest.name, manifest.version, manifest.class_names, 10)

    return {
        "images": len(images),
        "decode_png_28x28_us": per_image_us(
            lambda data: decode_image(data, height, width, channels), served, rounds
        ),
        "decode_png_224x224_rgb_us": per_image_us(
            lambda data: decode_image(data, height, width, channels), photos, rounds
        ),
        "build_response_us": per_image_us(build, results, rounds),
        "build_and_encode_us": per_image_us(
            lambda r: build(r).model_dump_json(exclude_none=True), results, rounds
        ),
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    device = torch.device("cpu" if args.dry_run else "cuda")
    model_dir = args.model
    started = time.perf_counter()
    gpu = Predictor.from_artifact(model_dir, device=str(device), backend="torch")
    cpu_torch = Predictor.from_artifact(model_dir, device="cpu", backend="torch")
    cpu_onnx = Predictor.from_artifact(model_dir, device="cpu", backend="onnxruntime")
    load_s = time.perf_counter() - started
    placement = devices_of(gpu)
    if device.type == "cuda" and any(not d.startswith("cuda") for d in placement):
        raise RuntimeError(f"the CUDA predictor holds tensors on {placement}")
    images = sample_images(max(args.batches), gpu.input_shape)
    rows = []
    for batch in args.batches:
        rows.append(
            {"role": "accelerator", **score_row(gpu, images[:batch], args.warmup, args.repeats)}
        )
        print(json.dumps(rows[-1]), flush=True)
    for predictor in (cpu_onnx, cpu_torch):
        row = score_row(predictor, images[: args.cpu_batch], args.warmup, args.repeats)
        rows.append({"role": "cpu_reference", **row})
        print(json.dumps(rows[-1]), flush=True)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)",
        "dry_run": args.dry_run,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "onnxruntime": _version("onnxruntime"),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": args.load_before,
        "model": str(model_dir),
        "load_seconds": round(load_s, 2),
        "cuda_predictor_devices": placement,
        "parity_vs_cpu_torch": parity(gpu, cpu_torch, images[: args.parity_images]),
        "rows": rows,
        "host_costs": host_costs(cpu_onnx, images[: args.host_images], args.host_rounds),
        "warmup": args.warmup,
        "repeats": args.repeats,
    }


def _version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except ImportError:
        return None


def table(result: dict) -> str:
    rows = result["rows"]
    cpu = {r["backend"]: r for r in rows if r["role"] == "cpu_reference"}
    reference = cpu.get("onnxruntime")
    costs = result["host_costs"]
    lines = [
        f"Device: {result['device']}, torch {result['torch']} (CUDA {result['cuda']}), "
        f"onnxruntime {result['onnxruntime']}; median of {result['repeats']} after "
        f"{result['warmup']} warm-up; torch threads {result['torch_threads']}; load average "
        f"before {result['load_average_before']}.",
        "",
        "| role | device | backend | batch | score img/s | score ms | device part ms | host part "
        "us/img | x CPU onnxruntime |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = row["score_img_s"] / reference["score_img_s"] if reference else float("nan")
        lines.append(
            f"| {row['role']} | {row['device']} | {row['backend']} | {row['batch']} | "
            f"{row['score_img_s']:.0f} | "
            f"{row['score_ms']:.2f} | {row['forward_ms']:.2f} | {row['host_us_per_image']:.0f} | "
            f"{ratio:.2f} |"
        )
    p = result["parity_vs_cpu_torch"]
    lines += [
        "",
        f"CPU per image outside the model (one thread): decode 28x28 PNG "
        f"{costs['decode_png_28x28_us']:.0f} us, decode 224x224 RGB PNG "
        f"{costs['decode_png_224x224_rgb_us']:.0f} us, build_response "
        f"{costs['build_response_us']:.0f} us, build + JSON {costs['build_and_encode_us']:.0f} us.",
        f"Predictor on {', '.join(result['cuda_predictor_devices'])}; vs CPU torch on "
        f"{p['images']} images: max |d log posterior| {p['max_abs_log_posterior']:.2e}, "
        f"max |d bits/dim| {p['max_abs_bits_per_dim']:.2e}, max |d OoD p| "
        f"{p['max_abs_ood_p_value']:.2e}, decisions equal {p['decisions_equal']:.3f}.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "model_store" / "fashion_mnist")
    parser.add_argument("--batches", type=int, nargs="+", default=list(GPU_BATCHES))
    parser.add_argument("--cpu-batch", type=int, default=CPU_BATCH)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--parity-images", type=int, default=512)
    parser.add_argument("--host-images", type=int, default=512)
    parser.add_argument("--host-rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run every code path on the CPU at tiny sizes (timings mean nothing)",
    )
    args = parser.parse_args(argv)
    if args.dry_run:
        args.batches, args.cpu_batch, args.warmup, args.repeats = [1, 8], 8, 1, 1
        args.parity_images, args.host_images, args.host_rounds = 8, 8, 1
    args.load_before = [round(v, 2) for v in os.getloadavg()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (or --dry-run)", file=sys.stderr)
        return 2
    started = time.time()
    result = run(args)
    result["wall_seconds"] = round(time.time() - started, 1)
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
