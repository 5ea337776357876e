"""Would static int8 make the served flows cheap enough for issue 18?  Build, time, compare.

    .venv/bin/python benchmarks/quantize_int8.py --json-out docs/results/quantize_int8.json
    .venv/bin/python benchmarks/quantize_int8.py --quick      # smoke run: 2 rounds, 1,000 images

Builds int8 copies of the artifact's two onnxruntime flows (the classifier's ``model.onnx`` and
``background/model.onnx``) with ``onnxruntime.quantization.quantize_static``: QDQ format,
per-channel symmetric int8 weights, uint8 activations whose ranges (min/max) are calibrated on
Fashion-MNIST *training* images only: a seeded sample of the part the model trained on, never the
5,000-image calibration split that the trust layer's references come from (the split is
re-derived from the manifest as ``trustgc calibrate`` does) and never the test split.  The
models go to ``--out-dir`` (under ``runs/``, not committed); nothing in the artifact changes.

Variants (``--variants``):

- ``plain``: every Conv and Gemm (and the ReLU between them, so the convolutions chain in int8)
  quantized.
- ``fp32_inputs``: the same, except the first Conv/Gemm of each coupling subnet, which reads the
  coupling's passive half (uint8-quantizing that input is what flips most answers), stays fp32.
- ``fp32_stage1_inputs``: as ``fp32_inputs``, but only in the couplings of the first stage (the
  half nearest to the pixels, the cheapest of those layers).
- ``fp32_scales``: the same as ``plain``, except the last Conv/Gemm of each coupling subnet, whose
  output becomes the coupling's log-scale (summed into log|det J|) and shift, stays fp32.

Then, in one run: ms per image of each flow and of both (the served order: classifier, then
background), fp32 and int8 sessions timed in alternating rounds with the serving options of
:class:`trustgc.onnx_backend.OnnxFlow` (one thread); and on the test split, fp32 vs int8 answers
scored with the shared head code (:func:`trustgc.scoring.score_latents`): accuracy, agreement,
|log q(x)/D| differences, correlation of log-likelihoods, the same for the background flow and
the background-ratio statistic, and (``--ood``) the AUCs of that statistic and of log q(x)
against MNIST, notMNIST and CIFAR-10 test images (CIFAR decoded as served).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "benchmarks")]

from machine import cpu_name, load_average  # noqa: E402
from timing import paired_ratio, time_rounds_raw  # noqa: E402

from training.data import load_dataset, load_recorded, split_calibration  # noqa: E402
from training.data_root import data_root  # noqa: E402
from training.metrics import roc_auc  # noqa: E402
from training.served_sets import served_cifar10  # noqa: E402
from trustgc.artifact import load_model  # noqa: E402
from trustgc.onnx_backend import INPUT_NAME, OnnxFlow, checked_onnx_path  # noqa: E402
from trustgc.preprocess import pixels_to_tensor, pixels_to_unit  # noqa: E402
from trustgc.trust.statistics import torch_form_of  # noqa: E402

DEFAULT_MODEL = REPO_ROOT / "model_store" / "fashion_mnist"
DEFAULT_OUT = REPO_ROOT / "runs" / "quantize_int8"
VARIANTS = ("plain", "fp32_stage1_inputs", "fp32_inputs", "fp32_scales")
FLOWS = ("classifier", "background")
_QUANTIZED_OPS = ["Conv", "Gemm", "Relu"]
_EVAL_BATCH = 256
# the served statistic's own formula (trustgc.trust.statistics), not restated here
_BACKGROUND_RATIO = torch_form_of("background_ratio")


def unit_images(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) bin centres in (0, 1), as served."""
    return pixels_to_unit(pixels_to_tensor(pixels)).numpy()


def training_images(training: dict, calibration: int, heldout: int, seed: int):
    """Two disjoint seeded samples of the part of the training set the model trained on (the
    trust calibration split is carved out first and never used): ``calibration`` images that fit
    the activation ranges, and ``heldout`` images with labels on which variants are compared
    before the test split is looked at.  Images are float32 in [0, 1], NCHW."""
    full = load_recorded(training, "train")
    trained_on, _ = split_calibration(
        full, int(training["calibration_size"]), int(training["calibration_seed"])
    )
    order = np.random.default_rng(seed).permutation(len(trained_on))
    fit, held = np.sort(order[:calibration]), np.sort(order[calibration : calibration + heldout])
    return unit_images(trained_on.images[fit]), (
        unit_images(trained_on.images[held]),
        trained_on.labels[held],
    )


def fp32_nodes(model, variant: str) -> list[str]:
    """The Conv/Gemm nodes a variant keeps in fp32.

    A coupling subnet is Conv/Gemm, ReLU, ..., Conv/Gemm.  ``fp32_inputs`` keeps its first layer
    (the one reading the coupling's passive half, not a ReLU output); ``fp32_stage1_inputs`` only
    those first layers that are convolutions of the first stage (the ones reading the fewest
    channels, the half nearest to the pixels); ``fp32_scales`` its last layer (the one not
    followed by a ReLU, whose output becomes the log-scale and shift).
    """
    if variant == "plain":
        return []
    made_by = {name: node.op_type for node in model.graph.node for name in node.output}
    read_by: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            read_by.setdefault(name, []).append(node.op_type)
    linear = [node for node in model.graph.node if node.op_type in ("Conv", "Gemm")]
    first = [node for node in linear if made_by.get(node.input[0]) != "Relu"]
    if variant == "fp32_inputs":
        return [node.name for node in first]
    if variant == "fp32_stage1_inputs":
        shapes = {weight.name: tuple(weight.dims) for weight in model.graph.initializer}
        convs = [node for node in first if node.op_type == "Conv"]
        fewest = min(shapes[node.input[1]][1] for node in convs)
        return [node.name for node in convs if shapes[node.input[1]][1] == fewest]
    if variant == "fp32_scales":
        return [node.name for node in linear if read_by.get(node.output[0], []) != ["Relu"]]
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def quantize_flow(source: Path, images: np.ndarray, out_dir: Path, name: str, variant: str):
    """Write ``<name>.<variant>.int8.onnx`` into ``out_dir``; returns its path and the excluded
    nodes."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(images, max(1, len(images) // 64)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch)}

    prepared = out_dir / f"{name}.pre.onnx"
    quant_pre_process(str(source), str(prepared))
    excluded = fp32_nodes(onnx.load(str(prepared)), variant)
    target = out_dir / f"{name}.{variant}.int8.onnx"
    quantize_static(
        str(prepared),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=_QUANTIZED_OPS,
        nodes_to_exclude=excluded,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return target, excluded


def open_flows(model_dir: Path, built: dict[str, dict[str, Path]], threads: int):
    """{variant: {flow: OnnxFlow}} with "fp32" the artifact's own checked files."""
    heads = {
        "classifier": load_model(model_dir, "cpu")[0].head,
        "background": load_model(model_dir / "background", "cpu")[0].head,
    }
    sources = {
        "classifier": checked_onnx_path(model_dir),
        "background": checked_onnx_path(model_dir / "background"),
    }
    flows = {
        "fp32": {
            f: OnnxFlow(sources[f], heads[f], threads, ["CPUExecutionProvider"]) for f in FLOWS
        }
    }
    for variant, paths in built.items():
        flows[variant] = {
            f: OnnxFlow(paths[f], heads[f], threads, ["CPUExecutionProvider"]) for f in FLOWS
        }
    return flows


def time_flows(flows, batches: list[int], rounds: int, seconds: float) -> list[dict]:
    """ms per image of each flow and of both, every variant timed in alternating rounds."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for batch in batches:
        pixels = torch.randint(0, 256, (batch, 1, 28, 28), generator=generator, dtype=torch.uint8)
        x = pixels_to_unit(pixels)
        calls = {}
        for variant, pair in flows.items():
            for flow in FLOWS:
                calls[f"{variant}|{flow}"] = lambda f=pair[flow], x=x: f(x)
            calls[f"{variant}|both"] = lambda p=pair, x=x: (p["classifier"](x), p["background"](x))
        per_round = time_rounds_raw(calls, rounds, seconds, warmup=2)
        for variant in flows:
            for flow in (*FLOWS, "both"):
                key = f"{variant}|{flow}"
                row = {"batch": batch, "variant": variant, "flow": flow}
                row["ms_per_image"] = 1000 * statistics.median(per_round[key]) / batch
                row["speedup_vs_fp32"] = paired_ratio(per_round, f"fp32|{flow}", key)
                rows.append(row)
    return rows


def score_all(flows, images: np.ndarray) -> dict[str, np.ndarray]:
    """Predicted class, log q(x)/D, log q_bg(x)/D and the background ratio of every image."""
    parts: dict[str, list[np.ndarray]] = {"pred": [], "ll": [], "bg": [], "ratio": []}
    for start in range(0, len(images), _EVAL_BATCH):
        x = torch.from_numpy(images[start : start + _EVAL_BATCH])
        with torch.inference_mode():
            scores = flows["classifier"].score(x)
            bg = flows["background"].score(x).log_likelihood
            ratio = _BACKGROUND_RATIO(replace(scores, background_log_likelihood=bg))
        dim = scores.dim
        parts["pred"].append(scores.log_posterior.argmax(dim=1).numpy())
        parts["ll"].append((scores.log_likelihood / dim).numpy())
        parts["bg"].append((bg / dim).numpy())
        parts["ratio"].append(ratio.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def compare(reference: dict, other: dict, labels: np.ndarray) -> dict[str, float]:
    """How far ``other``'s answers are from ``reference``'s (fp32) on the same images."""
    out = {
        "accuracy": float(np.mean(other["pred"] == labels)),
        "same_class": float(np.mean(other["pred"] == reference["pred"])),
    }
    for key in ("ll", "bg", "ratio"):
        diff = np.abs(other[key] - reference[key])
        out[f"{key}_max_abs_diff"] = float(diff.max())
        out[f"{key}_median_abs_diff"] = float(np.median(diff))
        out[f"{key}_p99_abs_diff"] = float(np.quantile(diff, 0.99))
        out[f"{key}_pearson"] = float(np.corrcoef(other[key], reference[key])[0, 1])
        out[f"{key}_spearman"] = float(spearmanr(other[key], reference[key]).statistic)
        out[f"{key}_std"] = float(np.std(reference[key]))
    # the OoD test's suspicious tail is the ratio's lower one: how far do answers move there?
    lower = reference["ratio"] <= np.quantile(reference["ratio"], 0.05)
    out["ratio_lower5pct_max_abs_diff"] = float(
        np.abs(other["ratio"] - reference["ratio"])[lower].max()
    )
    out["ratio_moved_over_0.1"] = int(np.sum(np.abs(other["ratio"] - reference["ratio"]) > 0.1))
    return out


def auc(inlier: np.ndarray, outlier: np.ndarray) -> float:
    """AUC of a score whose *low* values are suspicious: P(inlier > outlier) + P(tie) / 2."""
    return roc_auc(-np.asarray(inlier), -np.asarray(outlier))


def ood_images(name: str, limit: int) -> np.ndarray:
    """The first ``limit`` test images of an OoD set; CIFAR-10 decoded as the server decodes."""
    if name == "cifar10":
        pixels = served_cifar10(data_root(), "test", (1, 28, 28))[:limit]
        return pixels_to_unit(torch.from_numpy(pixels)).numpy()
    return unit_images(load_dataset(name, "test").images[:limit])


def evaluate(flows, training: dict, heldout, limit: int | None, ood: list[str], ood_limit):
    """fp32 vs each variant on held-out training images (for choosing a variant), on the test
    split, and the OoD AUCs of each variant against the test split."""
    images, labels = heldout
    scored = {variant: score_all(pair, images) for variant, pair in flows.items()}
    result = {"heldout_training_images": len(labels), "heldout": {}}
    for variant in flows:
        result["heldout"][variant] = compare(scored["fp32"], scored[variant], labels)
    test = load_recorded(training, "test")
    images, labels = unit_images(test.images), test.labels
    if limit:
        images, labels = images[:limit], labels[:limit]
    scored = {variant: score_all(pair, images) for variant, pair in flows.items()}
    result.update(test_images=len(labels), variants={})
    for variant in flows:
        result["variants"][variant] = compare(scored["fp32"], scored[variant], labels)
    for name in ood:
        outliers = ood_images(name, ood_limit)
        for variant, pair in flows.items():
            other = score_all(pair, outliers)
            entry = result["variants"][variant].setdefault("ood_auc", {})
            entry[name] = {
                "images": len(outliers),
                "background_ratio": auc(scored[variant]["ratio"], other["ratio"]),
                "log_likelihood": auc(scored[variant]["ll"], other["ll"]),
            }
    return result


def build(model_dir: Path, images: np.ndarray, args) -> tuple[dict, dict]:
    """Quantize both flows in every requested variant; (paths, build info)."""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    sources = {"classifier": model_dir, "background": model_dir / "background"}
    built: dict[str, dict[str, Path]] = {}
    info: dict[str, dict] = {}
    for variant in args.variants:
        built[variant], info[variant] = {}, {}
        for flow, directory in sources.items():
            path, excluded = quantize_flow(
                checked_onnx_path(directory), images, args.out_dir, flow, variant
            )
            built[variant][flow] = path
            info[variant][flow] = {
                "file": str(
                    path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
                ),
                "bytes": path.stat().st_size,
                "fp32_nodes": excluded,
            }
    return built, info


def print_tables(timing: list[dict], quality: dict) -> None:
    print(
        "\n| batch | flow | " + " | ".join(f"{v} ms/img (x fp32)" for v in _variants(timing)) + " |"
    )
    print("|---|---|" + "---|" * len(_variants(timing)))
    for batch in sorted({row["batch"] for row in timing}):
        for flow in (*FLOWS, "both"):
            cells = [
                f"{r['ms_per_image']:.3f} ({r['speedup_vs_fp32']:.2f}x)"
                for r in timing
                if r["batch"] == batch and r["flow"] == flow
            ]
            print(f"| {batch} | {flow} | " + " | ".join(cells) + " |")
    _print_quality(
        f"{quality['heldout_training_images']} held-out training images", quality["heldout"]
    )
    _print_quality(f"{quality['test_images']} test images", quality["variants"])
    names = list(quality["variants"])
    for name in quality["variants"][names[0]].get("ood_auc", {}):
        for stat in ("background_ratio", "log_likelihood"):
            values = [quality["variants"][n]["ood_auc"][name][stat] for n in names]
            print(f"| AUC {name} {stat} | " + " | ".join(f"{v:.4f}" for v in values) + " |")


def _print_quality(title: str, table: dict) -> None:
    names = list(table)
    print(f"\n| {title} | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for key in table[names[0]]:
        if key != "ood_auc":
            print(f"| {key} | " + " | ".join(f"{table[n][key]:.4g}" for n in names) + " |")


def _variants(timing: list[dict]) -> list[str]:
    return list(dict.fromkeys(row["variant"] for row in timing))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--calibration-images", type=int, default=1024)
    parser.add_argument("--calibration-seed", type=int, default=0)
    parser.add_argument("--heldout-images", type=int, default=10000)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=0.4, help="per callable per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test-limit", type=int, default=None, help="first N test images")
    parser.add_argument("--ood", nargs="*", default=["mnist", "notmnist", "cifar10"])
    parser.add_argument("--ood-limit", type=int, default=2000)
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1,000 test images")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.test_limit, args.ood_limit = 2, 0.1, 1000, 500
        args.heldout_images = 1000
    if args.rounds < 1 or args.calibration_images < 1:
        parser.error("--rounds and --calibration-images must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model_dir = args.model.resolve()
    _, manifest = load_model(model_dir, "cpu")
    load_before = load_average()
    calibration, heldout = training_images(
        manifest.training, args.calibration_images, args.heldout_images, args.calibration_seed
    )
    built, build_info = build(model_dir, calibration, args)
    flows = open_flows(model_dir, built, args.threads)
    timing = time_flows(flows, args.batches, args.rounds, args.seconds)
    load_after_timing = load_average()
    quality = evaluate(flows, manifest.training, heldout, args.test_limit, args.ood, args.ood_limit)
    import onnxruntime

    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "threads": args.threads},
        "load_average": {
            "before": load_before,
            "after_timing": load_after_timing,
            "after": load_average(),
        },
        "onnxruntime": onnxruntime.__version__,
        "model": str(
            model_dir.relative_to(REPO_ROOT) if model_dir.is_relative_to(REPO_ROOT) else model_dir
        ),
        "calibration": {
            "data": "fashion_mnist train split minus the trust calibration split "
            f"(calibration_size {manifest.training['calibration_size']}, "
            f"seed {manifest.training['calibration_seed']})",
            "images": args.calibration_images,
            "heldout_images": args.heldout_images,
            "seed": args.calibration_seed,
            "method": "MinMax",
        },
        "quantization": "QDQ, per-channel int8 weights, uint8 activations, ops "
        + ", ".join(_QUANTIZED_OPS),
        "build": build_info,
        "timing": {"rounds": args.rounds, "seconds_per_call_round": args.seconds, "rows": timing},
        "quality": quality,
        "command": " ".join(
            ["benchmarks/quantize_int8.py", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    print_tables(timing, quality)
    print(
        f"\nload average: {load_before} before, {load_after_timing} after timing, "
        f"{result['load_average']['after']} at the end"
    )
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
