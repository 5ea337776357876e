"""What the GC costs on CPU next to a ResNet-style classifier, and what its gating adds.

    .venv/bin/python benchmarks/model_cost.py                    # writes runs/bench/model_cost.*
    .venv/bin/python benchmarks/model_cost.py --quick            # smoke test: tiny time budget

Four tables, each from this one run:

1. Size and arithmetic: parameters and multiply-accumulates (MACs) per image of the
   ``fashion_mnist``, ``cifar10`` and ``imagenet`` IB-INN configs and of a ResNet-style baseline
   of matching stage layout: ``fashion_mnist_dc`` (the trained CNN baseline), a CIFAR ResNet with
   the cifar10 config's stages (built here) and ResNet-50 (``benchmarks/resnet.py``).  MACs come
   from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2: every conv, matmul and einsum,
   so the DCT pooling and the Gaussian-mixture head count too) and, as a cross-check, from
   forward hooks on ``Conv2d``/``Linear`` (those layers alone).
2. Forward images/s on CPU with 1 and 2 torch threads (batch 64; imagenet batch 2): the GC's
   ``score`` (posteriors and likelihoods) against the baseline's logits.  GC and baseline are
   timed in alternating rounds and the median round is kept, so other load hits both alike.
3. Gating overhead of the shipped model: ``Predictor.predict`` (forward, four statistics, both
   p-values, the decision) against the bare forward pass ``model.score`` at batch 64, with a
   breakdown of where the extra time goes; ``predict`` again with the PNG length computed by
   PIL's PNG encoder without its file writer (byte-identical lengths: the statistic is
   unchanged, checked here on the test images); and the cost of cheaper code-length variants
   (these change the statistic's definition and would need re-calibration: reported, never
   applied).
4. torch eager against onnxruntime for the shipped model's scoring (when ``model.onnx`` and
   ``trustgc/onnx_backend.py`` are there).

Weights: the trained artifacts where they exist (model_store/fashion_mnist,
runs/sweep/fashion_mnist_dc), fresh initialisations otherwise (cost does not depend on values).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from machine import cpu_name, load_average  # noqa: E402
from resnet import resnet50  # noqa: E402
from timing import paired_ratio, time_rounds, time_rounds_raw  # noqa: E402

from trustgc.artifact import build_model, load_model  # noqa: E402
from trustgc.config import ModelConfig, load_model_config  # noqa: E402
from trustgc.preprocess import pixels_to_unit  # noqa: E402

GC_DIR = REPO / "model_store" / "fashion_mnist"
BASELINE_DIR = REPO / "runs" / "sweep" / "fashion_mnist_dc"
CONFIGS = ("fashion_mnist", "cifar10", "imagenet")
BASELINE_NAMES = {
    "fashion_mnist": "fashion_mnist_dc (CNN baseline)",
    "cifar10": "cifar10 CNN (built here, same stages)",
    "imagenet": "ResNet-50",
}
GATING_TARGET = 1.05


# --------------------------------------------------------------------------------- counting


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_linear_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one ``Conv2d``/``Linear`` call that produced ``output`` (whole batch)."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return int(output.numel() * (module.in_channels // module.groups) * kh * kw)
    if isinstance(module, nn.Linear):
        return int(output.numel() * module.in_features)
    raise TypeError(f"not a Conv2d or Linear: {type(module).__name__}")


def hook_macs(model: nn.Module, x: torch.Tensor, forward: Callable | None = None) -> int:
    """Total Conv2d/Linear MACs of one forward pass over ``x``, counted with forward hooks."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += conv_linear_macs(module, output)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.inference_mode():
            (forward or model)(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def counter_macs(model: nn.Module, x: torch.Tensor, forward: Callable | None = None) -> int:
    """Total MACs of one forward pass (FlopCounterMode FLOPs / 2: convs, matmuls, einsums)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        (forward or model)(x)
    return int(counter.get_total_flops() // 2)


# ---------------------------------------------------------------------------------- models


def cifar_baseline_config() -> ModelConfig:
    """A CNN classifier with the cifar10 IB-INN's stages: same widths, resolutions and depths."""
    gc = load_model_config("cifar10")
    return ModelConfig(
        name="cifar10_dc",
        kind="classifier",
        input=gc.input,
        num_classes=gc.num_classes,
        stages=tuple(
            {"blocks": s.blocks, "width": s.width, "downsample": s.downsample} for s in gc.stages
        ),
    )


def build_pair(config: str) -> tuple[nn.Module, nn.Module, dict[str, str]]:
    """(GC, baseline, where each one's weights came from) for one config name."""
    if config == "fashion_mnist" and (GC_DIR / "model.json").is_file():
        gc, _ = load_model(GC_DIR)
        gc_source = str(GC_DIR.relative_to(REPO))
    else:
        gc, gc_source = build_model(load_model_config(config)).eval(), "fresh init"
    if config == "fashion_mnist":
        if (BASELINE_DIR / "model.json").is_file():
            baseline, _ = load_model(BASELINE_DIR)
            baseline_source = str(BASELINE_DIR.relative_to(REPO))
        else:
            baseline, baseline_source = build_model(load_model_config("fashion_mnist_dc")), "fresh"
    elif config == "cifar10":
        baseline, baseline_source = build_model(cifar_baseline_config()), "fresh init"
    elif config == "imagenet":
        baseline, baseline_source = resnet50(), "fresh init"
    else:
        raise ValueError(f"unknown config {config!r}")
    return gc.eval(), baseline.eval(), {"gc": gc_source, "baseline": baseline_source}


def input_batch(model: nn.Module, batch: int, seed: int = 0) -> torch.Tensor:
    """[0, 1] images of the model's input shape (bin centres of random 8-bit pixels)."""
    spec = model.config.input if hasattr(model, "config") else None
    shape = (spec.channels, spec.height, spec.width) if spec else (3, 224, 224)
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, *shape), generator=generator, dtype=torch.uint8)
    return pixels_to_unit(pixels)


def gc_forward(model: nn.Module) -> Callable:
    """What serving computes: posteriors and likelihoods (``score``); logits for a classifier."""
    return model.score if hasattr(model, "score") else model


# ------------------------------------------------------------------------------- sections


def size_rows(configs: tuple[str, ...]) -> list[dict]:
    rows = []
    for config in configs:
        gc, baseline, sources = build_pair(config)
        for role, model in (("gc", gc), ("baseline", baseline)):
            x = input_batch(model, 1)
            forward = gc_forward(model)
            row = {
                "config": config,
                "role": role,
                "model": f"{config} IB-INN" if role == "gc" else BASELINE_NAMES[config],
                "weights": sources[role],
                "parameters": count_parameters(model),
                "macs": counter_macs(model, x, forward),
                "conv_linear_macs": hook_macs(model, x, forward),
            }
            if role == "gc":
                row["network_parameters"] = count_parameters(model.flow)
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    return rows


def throughput_rows(
    configs: tuple[str, ...], threads: tuple[int, ...], batch: int, imagenet_batch: int, rounds, s
) -> list[dict]:
    rows = []
    for config in configs:
        gc, baseline, _ = build_pair(config)
        size = imagenet_batch if config == "imagenet" else batch
        x = input_batch(gc, size)
        for count in threads:
            torch.set_num_threads(count)
            with torch.inference_mode():
                calls = {
                    "gc": lambda gc=gc, x=x: gc.score(x),
                    "baseline": lambda baseline=baseline, x=x: baseline(x),
                }
                raw = time_rounds_raw(calls, rounds, s)
            timing = {name: statistics.median(values) for name, values in raw.items()}
            rows.append(
                {
                    "config": config,
                    "threads": count,
                    "batch": size,
                    "gc_img_s": size / timing["gc"],
                    "baseline_img_s": size / timing["baseline"],
                    "ratio": paired_ratio(raw, "baseline", "gc"),
                    "load_1min": load_average(),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def test_pixels(count: int) -> tuple[np.ndarray, str]:
    """uint8 Fashion-MNIST test images (N, 1, 28, 28), or random pixels when the data is absent."""
    try:
        from training.data import load_fashion_mnist

        images = load_fashion_mnist("test").images[:count]
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), "Fashion-MNIST test images"
    except (OSError, ValueError, ImportError):
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (count, 1, 28, 28), dtype=np.uint8), "random pixels"


def _pil_image(image: np.ndarray):
    from PIL import Image

    array = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(array))


def png_pil_bits(pixels: np.ndarray, **options) -> np.ndarray:
    """PNG length in bits per image saved by PIL with ``options`` (the shipped statistic: none)."""
    lengths = np.empty(len(pixels))
    for index, image in enumerate(pixels):
        buffer = io.BytesIO()
        _pil_image(image).save(buffer, format="PNG", **options)
        lengths[index] = 8.0 * buffer.tell()
    return lengths


# PNG file = signature (8) + IHDR chunk (25) + one IDAT chunk's length, type and CRC (12) +
# IEND (12) + the zlib stream; PIL writes nothing else for a plain L or RGB image.
PNG_FIXED_BYTES = 57
_ONE_IDAT_LIMIT = 65536  # PIL's encoder buffer: larger streams are split over several IDATs


def png_encoder_bits(pixels: np.ndarray) -> np.ndarray:
    """The shipped PNG length, computed faster: PIL's own PNG ("zip") encoder without the file
    writer.  Same filters, compressor and level, so the same bytes: identical L(x), no
    re-calibration (falls back to a full save when the stream would need several IDAT chunks).
    """
    lengths = np.empty(len(pixels))
    for index, image in enumerate(pixels):
        picture = _pil_image(image)
        stream = picture.tobytes("zip", (picture.mode, False, -1, -1, b""))
        if len(stream) >= _ONE_IDAT_LIMIT:
            lengths[index] = png_pil_bits(image[None])[0]
        else:
            lengths[index] = 8.0 * (len(stream) + PNG_FIXED_BYTES)
    return lengths


def zlib_bits(pixels: np.ndarray, level: int) -> np.ndarray:
    """zlib length in bits of each image's raw bytes (no PNG filters, header or CRCs)."""
    return np.array([8.0 * len(zlib.compress(image.tobytes(), level)) for image in pixels])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (ties broken by order: fine for a summary)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _with_png(function: Callable[[np.ndarray], np.ndarray], call: Callable[[], object]):
    """Run ``call`` with the complexity statistic's PNG length computed by ``function``."""
    import trustgc.trust.statistics as module

    original = module.png_code_length_bits
    module.png_code_length_bits = function
    try:
        return call()
    finally:
        module.png_code_length_bits = original


def gating_rows(
    threads: tuple[int, ...], batch: int, rounds: int, seconds: float, compare_images: int
) -> dict:
    """Predictor.predict against model.score at ``batch``, the breakdown, and PNG variants.

    One call of each per round (``rounds`` rounds): the ratios are medians of per-round ratios.
    """
    from trustgc.inference import model_outputs
    from trustgc.trust.predictor import Predictor
    from trustgc.trust.statistics import (
        PNG_LENGTH_SURROGATE,
        compute_statistics,
        png_code_length_bits,
        surrogate_of,
    )

    predictor = Predictor.from_artifact(GC_DIR)
    model = predictor.model
    pixels, source = test_pixels(batch)
    tensor = torch.from_numpy(pixels)
    stats = predictor.score(pixels).statistics  # the served components
    background = predictor.background  # the ratio statistic's flow, when the artifact has one
    outputs = model_outputs(model, tensor, 256, "cpu", background=background)
    non_png = tuple(n for n in stats if surrogate_of(n) != PNG_LENGTH_SURROGATE)
    rows = []
    for count in threads:
        torch.set_num_threads(count)

        def bare(tensor=tensor):
            with torch.inference_mode():
                model.score(pixels_to_unit(tensor))

        calls = {
            "bare_forward": bare,
            "predict": lambda: predictor.predict(pixels),
            "predict_fast_png": lambda: _with_png(
                png_encoder_bits, lambda: predictor.predict(pixels)
            ),
            "model_outputs": lambda tensor=tensor: model_outputs(
                model, tensor, 256, "cpu", background=background
            ),
            "png": lambda: png_code_length_bits(pixels),
            "png_fast": lambda: png_encoder_bits(pixels),
            "other_statistics": lambda: compute_statistics(outputs, pixels, non_png),
            "p_values": lambda: predictor.p_values(stats),
        }
        raw = time_rounds_raw(calls, rounds, 0.0)
        timing = {name: statistics.median(values) for name, values in raw.items()}
        accounted = timing["model_outputs"] + timing["png"]
        accounted += timing["other_statistics"] + timing["p_values"]
        rows.append(
            {
                "threads": count,
                "batch": batch,
                "ms": {name: 1e3 * value for name, value in timing.items()},
                "rest_ms": 1e3 * (timing["predict"] - accounted),
                "rounds": rounds,
                "ratio": paired_ratio(raw, "predict", "bare_forward"),
                "ratio_fast_png": paired_ratio(raw, "predict_fast_png", "bare_forward"),
                "png_share": paired_ratio(raw, "png", "bare_forward"),
                "load_1min": load_average(),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    torch.set_num_threads(1)
    variants = {
        "PIL PNG save, defaults (shipped)": lambda p: png_code_length_bits(p),
        "PIL PNG encoder without file writer (identical)": png_encoder_bits,
        "PIL PNG save, compress_level=1": lambda p: png_pil_bits(p, compress_level=1),
        "zlib level 1 on raw bytes": lambda p: zlib_bits(p, 1),
        "zlib level 6 on raw bytes": lambda p: zlib_bits(p, 6),
    }
    timing = time_rounds({n: lambda f=f: f(pixels) for n, f in variants.items()}, rounds, seconds)
    many, _ = test_pixels(compare_images)
    shipped = png_code_length_bits(many)
    variant_rows = []
    for name, function in variants.items():
        bits = function(many)
        variant_rows.append(
            {
                "variant": name,
                "ms_per_batch": 1e3 * timing[name],
                "us_per_image": 1e6 * timing[name] / batch,
                "mean_bits_per_dim": float(bits.mean() / many[0].size),
                "max_abs_diff_bits": float(np.abs(bits - shipped).max()),
                "spearman_vs_shipped": spearman(bits, shipped),
                "images_compared": len(many),
            }
        )
        print(json.dumps(variant_rows[-1]), flush=True)
    return {"source": source, "rows": rows, "png_variants": variant_rows}


def onnx_rows(threads: tuple[int, ...], batch: int, rounds: int, seconds: float) -> list[dict]:
    """torch ``score`` against onnxruntime f + torch head (``OnnxFlow.score``), shipped model."""
    try:
        from trustgc.onnx_backend import OnnxFlow, checked_onnx_path

        path = checked_onnx_path(GC_DIR)
    except (ImportError, OSError, ValueError) as error:
        print(f"onnxruntime comparison skipped: {error}", flush=True)
        return []
    model, _ = load_model(GC_DIR)
    x = input_batch(model, batch)
    rows = []
    for count in threads:
        torch.set_num_threads(count)
        flow = OnnxFlow(path, model.head, threads=count)
        with torch.inference_mode():
            timing = time_rounds(
                {"torch": lambda: model.score(x), "onnxruntime": lambda f=flow: f.score(x)},
                rounds,
                seconds,
            )
        rows.append(
            {
                "threads": count,
                "batch": batch,
                "torch_img_s": batch / timing["torch"],
                "onnx_img_s": batch / timing["onnxruntime"],
                "speedup": timing["torch"] / timing["onnxruntime"],
                "load_1min": load_average(),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


# -------------------------------------------------------------------------------- report


def human(value: float) -> str:
    """1234567 -> '1.23 M'; 4.1e9 -> '4.10 G' (three significant figures)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value:.3g}"


def render(result: dict) -> str:
    lines = [
        f"Machine: {result['machine']}; torch {result['torch']}; load average (1 min) "
        f"{result['load_before']:.2f} before, {result['load_after']:.2f} after.",
        "",
        "Size and arithmetic per image (MACs = FlopCounterMode FLOPs / 2; conv+linear = forward "
        "hooks on Conv2d/Linear only):",
        "",
        "| config | model | weights | parameters | MACs | conv+linear MACs | MACs GC / baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {(r["config"], r["role"]): r for r in result["size"]}
    for row in result["size"]:
        ratio = ""
        if row["role"] == "gc" and (row["config"], "baseline") in by:
            ratio = f"{row['macs'] / by[(row['config'], 'baseline')]['macs']:.2f}x"
        params = human(row["parameters"])
        if "network_parameters" in row:
            params += f" ({human(row['network_parameters'])} in f)"
        lines.append(
            f"| {row['config']} | {row['model']} | {row['weights']} | {params} | "
            f"{human(row['macs'])} | {human(row['conv_linear_macs'])} | {ratio} |"
        )
    lines += [
        "",
        "Forward throughput on CPU (GC: `score`, posteriors and likelihoods; baseline: logits):",
        "",
        "| config | threads | batch | GC img/s | baseline img/s | GC / baseline | load 1 min |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["throughput"]:
        lines.append(
            f"| {row['config']} | {row['threads']} | {row['batch']} | {row['gc_img_s']:.1f} | "
            f"{row['baseline_img_s']:.1f} | {row['ratio']:.2f}x | {row['load_1min']:.2f} |"
        )
    gating = result["gating"]
    lines += [
        "",
        f"Gating overhead of the shipped model ({gating['source']}): `Predictor.predict` "
        f"(forward, statistics, both p-values, decision) / bare `model.score`; target <= "
        f"{GATING_TARGET:.2f}x. Ratios: medians over rounds of back-to-back calls. "
        "Milliseconds per batch (medians); the last columns break `predict` down (rest = "
        "predict minus the parts: result objects, and timing noise):",
        "",
        "| threads | batch | rounds | bare forward | predict | ratio | ratio, identical fast "
        "PNG | PNG / forward | model_outputs | PNG | PNG, fast | other statistics | p-values | "
        "rest |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in gating["rows"]:
        ms = row["ms"]
        lines.append(
            f"| {row['threads']} | {row['batch']} | {row['rounds']} | {ms['bare_forward']:.1f} | "
            f"{ms['predict']:.1f} | **{row['ratio']:.3f}x** | {row['ratio_fast_png']:.3f}x | "
            f"{row['png_share']:.3f} | "
            f"{ms['model_outputs']:.1f} | {ms['png']:.1f} | {ms['png_fast']:.1f} | "
            f"{ms['other_statistics']:.2f} | {ms['p_values']:.2f} | {row['rest_ms']:.1f} |"
        )
    compared = gating["png_variants"][0]["images_compared"] if gating["png_variants"] else 0
    lines += [
        "",
        f"Code length L(x) of the complexity statistic, one thread (time per batch of "
        f"{gating['rows'][0]['batch'] if gating['rows'] else '-'}; differences over {compared} "
        "images; any variant that changes the bits changes the statistic and needs "
        "re-calibration):",
        "",
        "| variant | ms per batch | us per image | mean bits/dim | max abs diff (bits) | "
        "Spearman vs shipped |",
        "|---|---|---|---|---|---|",
    ]
    for row in gating["png_variants"]:
        lines.append(
            f"| {row['variant']} | {row['ms_per_batch']:.2f} | {row['us_per_image']:.0f} | "
            f"{row['mean_bits_per_dim']:.3f} | {row['max_abs_diff_bits']:.0f} | "
            f"{row['spearman_vs_shipped']:.4f} |"
        )
    if result["onnx"]:
        lines += [
            "",
            "torch eager vs onnxruntime (f in onnxruntime, head in torch), shipped model:",
            "",
            "| threads | batch | torch img/s | onnxruntime img/s | speedup | load 1 min |",
            "|---|---|---|---|---|---|",
        ]
        for row in result["onnx"]:
            lines.append(
                f"| {row['threads']} | {row['batch']} | {row['torch_img_s']:.1f} | "
                f"{row['onnx_img_s']:.1f} | {row['speedup']:.2f}x | {row['load_1min']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--imagenet-batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum time per round")
    parser.add_argument(
        "--gating-rounds", type=int, default=40, help="rounds of one call each (gating)"
    )
    parser.add_argument(
        "--compare-images", type=int, default=2000, help="images for the PNG variant check"
    )
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 round, 0.05 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.compare_images, args.gating_rounds = 1, 0.05, 128, 2
    threads, configs = tuple(args.threads), tuple(args.configs)
    started = time.time()
    load_before = load_average()
    result = {
        "date": datetime.now(UTC).isoformat(timespec="minutes"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs",
        "torch": torch.__version__,
        "load_before": load_before,
        "size": size_rows(configs),
        "throughput": throughput_rows(
            configs, threads, args.batch, args.imagenet_batch, args.rounds, args.seconds
        ),
        "gating": gating_rows(
            threads, args.batch, args.gating_rounds, args.seconds, args.compare_images
        ),
        "onnx": onnx_rows(threads, args.batch, args.rounds, args.seconds),
    }
    result["load_after"] = load_average()
    result["wall_seconds"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_cost.json").write_text(json.dumps(result, indent=2))
    text = render(result)
    (args.out / "model_cost.md").write_text(text)
    print(text)
    return 0 if all(math.isfinite(r["ratio"]) for r in result["gating"]["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
