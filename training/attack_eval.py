"""``trustgc attack``: Carlini-Wagner attacks on the GC and the baseline, and their detection.

Protocol (see docs/attacks.md for the numbers and training/attacks.py for the attack):

- attacked images: the first ``n_images`` test images, in a seeded random order, that both the
  served GC and the discriminative baseline classify correctly; one random target class != the
  label per image (seeded), the same images and targets for every setting and both models;
- every adversarial is an 8-bit image: the attack forwards the nearest uint8 image at every step
  (straight-through gradient) and the result is quantised with ``quantize_unit`` (the inverse of
  ``pixels_to_unit``); success is re-checked on the served answer for that uint8 image, and L2
  is measured between the quantised adversarial and the clean image, in [0, 1] pixel units;
- detection: ROC-AUC (%) of -log p for clean test images (the whole test set) against the
  successful adversarials, for the served attack p-value (combined_attack) and each of its
  components, the production OoD p-value and the paper's two-sided typicality p-value; plus the
  share of
  successful adversarials that the service flags as attacks (attack p < attack_alpha), rejects
  as OoD (OoD p < ood_alpha), or either ("caught": the served decision is not "accepted");
- low confidence: a served answer whose top-1 probability is below 0.9 (reported for
  kappa <= 1, where the attack only asks for a small margin);
- baseline: the same attack (d = 0) on the CNN's logits, and the ratio of mean L2 (GC / DC)
  over the images both attacks fooled.  Note that kappa is in logit units, and the GC's logits
  (-||z - mu_y||^2 / 2) and the CNN's are not on a common scale.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from training.attack_options import (
    DETECT_STATISTICS,
    DETECT_WEIGHTS,
    KAPPAS,
    add_attack_arguments,
)
from training.attacks import (
    AttackConfig,
    AttackResult,
    DetectionPenalty,
    carlini_wagner_l2,
    dc_attack_fn,
    gc_attack_fn,
    quantize_unit,
    random_targets,
)
from training.data import load_dataset
from training.metrics import binomial_interval, roc_auc
from trustgc.artifact import load_model
from trustgc.inference import latent_scores
from trustgc.preprocess import pixels_to_tensor, pixels_to_unit
from trustgc.trust.predictor import Decision, Predictor
from trustgc.trust.statistics import (
    ATTACK_STATISTIC,
    COMBINATIONS,
    PAPER_STATISTIC,
    STATISTICS,
    differentiable,
)

__all__ = [
    "DEFAULT_SETTINGS",
    "LOW_CONFIDENCE",
    "evaluate_attacks",
    "main",
    "write_markdown",
]

DEFAULT_SETTINGS: tuple[tuple[float, float], ...] = tuple(
    (kappa, d) for kappa in KAPPAS for d in DETECT_WEIGHTS
)
#: A served answer is "low-confidence" when its top-1 probability is below this.
LOW_CONFIDENCE = 0.9
#: The served attack statistic's components (from the registry).
ATTACK_COMPONENTS = COMBINATIONS[ATTACK_STATISTIC].components


def _served(predictor: Predictor, pixels: torch.Tensor) -> dict[str, np.ndarray]:
    """What the service answers for uint8 images (N, C, H, W): the Predictor's own scores."""
    table = predictor.score(pixels.numpy())
    return {
        "probabilities": table.probabilities,
        "attack_p": table.attack_p_value,
        "ood_p": table.ood_p_value,
        "typicality_p": table.p_values[PAPER_STATISTIC],
        **{f"{name}_p": table.p_values[name] for name in ATTACK_COMPONENTS},
        "flagged": table.attack_suspected,
        "rejected": table.out_of_distribution,
        "caught": table.decisions != Decision.ACCEPTED,
    }


@torch.inference_mode()
def _z_squared(
    predictor: Predictor, penalty: DetectionPenalty, pixels: torch.Tensor, batch: int = 500
) -> dict[str, np.ndarray]:
    """Each statistic's term of L_detect (its squared z-score, clamped to its served side) on
    uint8 images: the very torch forms the attack penalises, on the served float64 scores."""
    parts: dict[str, list[np.ndarray]] = {name: [np.empty(0)] for name in penalty.statistics}
    for start in range(0, len(pixels), batch):
        x = pixels_to_unit(pixels[start : start + batch].to(predictor.device))
        for name, term in penalty.terms(latent_scores(predictor.model, x), x).items():
            parts[name].append(term.double().cpu().numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


@torch.inference_mode()
def _dc_predict(model: torch.nn.Module, pixels: torch.Tensor, batch: int = 500) -> np.ndarray:
    return np.concatenate(
        [
            model(pixels_to_unit(pixels[i : i + batch])).argmax(dim=1).numpy()
            for i in range(0, len(pixels), batch)
        ]
    )


def _attack(
    logits_fn, images: torch.Tensor, targets: torch.Tensor, config: AttackConfig, batch: int
) -> AttackResult:
    """The attack in batches of ``batch`` images (one batched attack per chunk)."""
    parts = [
        carlini_wagner_l2(logits_fn, images[i : i + batch], targets[i : i + batch], config)
        for i in range(0, len(images), batch)
    ]
    detects = [p.detect for p in parts]
    return AttackResult(
        adversarial=torch.cat([p.adversarial for p in parts]),
        success=torch.cat([p.success for p in parts]),
        l2=torch.cat([p.l2 for p in parts]),
        margin=torch.cat([p.margin for p in parts]),
        detect=None if any(d is None for d in detects) else torch.cat(detects),
        c=torch.cat([p.c for p in parts]),
        gradient_evaluations=sum(p.gradient_evaluations for p in parts),
    )


def _quantised_l2(adversarial: torch.Tensor, clean_pixels: torch.Tensor) -> tuple:
    pixels = quantize_unit(adversarial)
    diff = pixels_to_unit(pixels) - pixels_to_unit(clean_pixels)
    return pixels, diff.flatten(1).norm(dim=1).numpy().astype(np.float64)


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None


def _auc(clean: np.ndarray, attacked: np.ndarray) -> float | None:
    if attacked.size == 0:
        return None
    return 100.0 * roc_auc(-np.log(clean), -np.log(attacked))


def _kappa_name(kappa: float) -> str:
    return "inf" if math.isinf(kappa) else f"{kappa:g}"


def evaluate_attacks(
    gc_dir: Path | str,
    baseline_dir: Path | str,
    n_images: int = 50,
    steps: int = 100,
    settings: Sequence[tuple[float, float]] = DEFAULT_SETTINGS,
    rounds: int = 3,
    c0: float = 1.0,
    seed: int = 0,
    data_dir: Path | None = None,
    detect_statistics: Sequence[str] = DETECT_STATISTICS,
    with_baseline: bool = True,
    batch_size: int = 100,
    quantize: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Attack the served GC and the baseline for every (kappa, d) setting; see module docs."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    started = time.perf_counter()
    predictor = Predictor.from_artifact(gc_dir)
    baseline, baseline_manifest = load_model(baseline_dir)
    for module in (predictor.model, baseline):
        module.requires_grad_(False)
    calibration = predictor.calibration
    dataset = predictor.manifest.training.get("dataset", "fashion_mnist")
    if baseline_manifest.training.get("dataset", dataset) != dataset:
        raise ValueError(f"the baseline was not trained on {dataset}")
    test = load_dataset(dataset, "test", data_dir)
    pixels = pixels_to_tensor(test.images)
    labels = np.asarray(test.labels, dtype=np.int64)

    clean = _served(predictor, pixels)
    gc_correct = clean["probabilities"].argmax(axis=1) == labels
    dc_correct = _dc_predict(baseline, pixels) == labels
    order = np.random.default_rng(seed).permutation(len(labels))
    chosen = order[(gc_correct & dc_correct)[order]][:n_images]
    if len(chosen) < n_images:
        raise ValueError(f"only {len(chosen)} test images are correctly classified by both")
    clean_pixels = pixels[chosen]
    images = pixels_to_unit(clean_pixels)
    num_classes = predictor.manifest.config.num_classes
    targets_np = random_targets(labels[chosen], num_classes, seed)
    targets = torch.from_numpy(targets_np)
    log(
        f"clean test set scored ({time.perf_counter() - started:.0f}s); "
        f"attacking {len(chosen)} images"
    )

    low_conf_clean = clean["probabilities"].max(axis=1) < LOW_CONFIDENCE
    interval = binomial_interval(len(labels), calibration.attack_alpha, 0.99)
    attack_rate = float(np.mean(clean["flagged"]))
    clean_summary = {
        "n_test": len(labels),
        "gc_accuracy": float(np.mean(gc_correct)),
        "dc_accuracy": float(np.mean(dc_correct)),
        "attack_alpha": calibration.attack_alpha,
        "ood_alpha": calibration.ood_alpha,
        "attack_statistic": calibration.attack_statistic,
        "ood_statistic": calibration.ood_statistic,
        "attack_flag_rate": attack_rate,
        "attack_flag_interval_99": list(interval),
        "attack_flag_calibrated": interval[0] <= attack_rate <= interval[1],
        "ood_reject_rate": float(np.mean(clean["rejected"])),
        "caught_rate": float(np.mean(clean["caught"])),
        "low_confidence_rate": float(np.mean(low_conf_clean)),
    }

    penalty = DetectionPenalty.from_calibration(calibration, detect_statistics)
    reported = DetectionPenalty.from_calibration(calibration, DETECT_STATISTICS)  # z2 columns
    gc_rows, dc_rows, gc_l2_by_kappa = [], [], {}
    for kappa, d in settings:
        tick = time.perf_counter()
        config = AttackConfig(
            kappa=kappa, d=d, steps=steps, rounds=rounds, c0=c0, quantize=quantize
        )
        fn = gc_attack_fn(predictor.model, penalty if d > 0 else None)
        result = _attack(fn, images, targets, config, batch_size)
        adv_pixels, l2 = _quantised_l2(result.adversarial, clean_pixels)
        served = _served(predictor, adv_pixels)
        success = result.success.numpy() & (served["probabilities"].argmax(axis=1) == targets_np)
        z2 = _z_squared(predictor, reported, adv_pixels[torch.from_numpy(success)])
        top1 = served["probabilities"].max(axis=1)
        row = {
            "kappa": _kappa_name(kappa),
            "d": d,
            "attempted": len(chosen),
            "attack_success_rate": float(result.success.float().mean()),
            "success_rate": float(np.mean(success)),
            "mean_l2": _mean(l2[success]),
            "median_l2": float(np.median(l2[success])) if success.any() else None,
            "auc_attack": _auc(clean["attack_p"], served["attack_p"][success]),
            **{
                f"auc_{name}": _auc(clean[f"{name}_p"], served[f"{name}_p"][success])
                for name in ATTACK_COMPONENTS
            },
            "auc_production_ood": _auc(clean["ood_p"], served["ood_p"][success]),
            "auc_typicality": _auc(clean["typicality_p"], served["typicality_p"][success]),
            "flagged_rate": _mean(served["flagged"][success]),
            "rejected_rate": _mean(served["rejected"][success]),
            "caught_rate": _mean(served["caught"][success]),
            "low_confidence_rate": _mean(top1[success] < LOW_CONFIDENCE) if kappa <= 1 else None,
            "mean_top1": _mean(top1[success]),
            "typicality_z2": _mean(z2["typicality"]),
            "class_distance_z2": _mean(z2["class_distance"]),
            "logit_margin_z2": _mean(z2["logit_margin"]),
            "mean_c": _mean(result.c.numpy()[success]),
            "gradient_evaluations": result.gradient_evaluations,
            "seconds": time.perf_counter() - tick,
        }
        gc_rows.append(row)
        if d == 0:
            gc_l2_by_kappa[kappa] = np.where(success, l2, np.nan)
        log(_progress("GC", row))

    for kappa in dict.fromkeys(kappa for kappa, _ in settings) if with_baseline else ():
        tick = time.perf_counter()
        config = AttackConfig(kappa=kappa, steps=steps, rounds=rounds, c0=c0, quantize=quantize)
        result = _attack(dc_attack_fn(baseline), images, targets, config, batch_size)
        adv_pixels, l2 = _quantised_l2(result.adversarial, clean_pixels)
        success = result.success.numpy() & (_dc_predict(baseline, adv_pixels) == targets_np)
        row = {
            "kappa": _kappa_name(kappa),
            "attempted": len(chosen),
            "attack_success_rate": float(result.success.float().mean()),
            "success_rate": float(np.mean(success)),
            "mean_l2": _mean(l2[success]),
            "median_l2": float(np.median(l2[success])) if success.any() else None,
            "gradient_evaluations": result.gradient_evaluations,
            "seconds": time.perf_counter() - tick,
        }
        gc_l2 = gc_l2_by_kappa.get(kappa)
        if gc_l2 is not None:
            both = np.isfinite(gc_l2) & success
            row["paired"] = int(both.sum())
            row["gc_mean_l2_paired"] = _mean(gc_l2[both])
            row["dc_mean_l2_paired"] = _mean(l2[both])
            row["l2_ratio_gc_over_dc"] = (
                float(np.mean(gc_l2[both]) / np.mean(l2[both])) if both.any() else None
            )
        dc_rows.append(row)
        log(_progress("DC", row))

    return {
        "config": {
            "gc_dir": str(gc_dir),
            "baseline_dir": str(baseline_dir),
            "dataset": dataset,
            "n_images": len(chosen),
            "steps": steps,
            "rounds": rounds,
            "c0": c0,
            "lr": AttackConfig().lr,
            "seed": seed,
            "quantize": quantize,
            "detect_statistics": list(detect_statistics),
            "low_confidence_threshold": LOW_CONFIDENCE,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_end": list(os.getloadavg()),
        },
        "clean": clean_summary,
        "gc": gc_rows,
        "baseline": dc_rows,
        "runtime_seconds": time.perf_counter() - started,
    }


def _progress(model: str, row: dict) -> str:
    l2 = row["mean_l2"]
    shown = "-" if l2 is None else f"{l2:.3f}"
    d = f" d={row['d']:g}" if "d" in row else ""
    return (
        f"{model} kappa={row['kappa']}{d}: success {row['success_rate']:.2f}, mean L2 {shown}, "
        f"{row['seconds']:.0f}s"
    )


def _fmt(value, digits: int = 3, percent: bool = False) -> str:
    if value is None:
        return "-"
    if percent:
        return f"{100.0 * value:.0f}%"
    return f"{value:.{digits}f}"


def _detect_paragraph(statistics: Sequence[str]) -> str:
    """Which threat model the run used: L_detect on the paper's test only, or adaptive."""
    names = " and ".join(f"`{s}`" for s in statistics)
    described = "; ".join(STATISTICS[s].description for s in statistics)
    followed = set(differentiable(ATTACK_COMPONENTS))
    without = [name for name in ATTACK_COMPONENTS if name not in followed]
    if followed <= set(statistics):
        lacking = " and ".join(f"`{name}`" for name in without)
        verb = "rests" if len(without) == 1 else "rest"
        note = (
            f" ({lacking} {verb} on a PNG length, which has none; an attacker with a smooth "
            "proxy for compressibility is not evaluated here)"
            if without
            else ""
        )
        threat = (
            "Threat model: adaptive.  An attacker who knows the service targets the statistics "
            f"that raise the flag (`{ATTACK_STATISTIC}`'s components), not only the paper's "
            f"test: every component with a gradient{note}."
        )
    elif followed & set(statistics):
        threat = "Threat model: partly adaptive (some of the attack statistic's components)."
    else:
        threat = (
            "Threat model: the paper's (and its reference [7]'s) detection-aware attacker, who "
            "fools the paper's detection mechanism, the typicality test; the served attack "
            f"statistic (`{ATTACK_STATISTIC}`) is not in its loss."
        )
    return (
        f"L_detect = sum over {names} of ((s(x) - mean) / std)^2, mean and std from the "
        f"calibration summary (`calibration.json`, components[s].summary): the squared z-score "
        f"of {described}.  {threat}  The penalty is smooth, sided like the served tests "
        "(one-sided for `logit_margin`, whose served test only rejects large margins: only "
        "the excess above the mean counts) and about 1 per statistic on clean data; d = 66 and "
        "1000 weigh it against ||delta||^2 (about 0.1-1) and c times the logit margin."
    )


def write_markdown(result: dict, path: Path | str, command: str) -> str:
    """Write the results as docs/attacks.md (returns the text)."""
    config, clean = result["config"], result["clean"]
    lines = [
        "# Adversarial attacks and their detection",
        "",
        f"Produced by `{command}` in {result['runtime_seconds'] / 60:.1f} min on a CPU machine "
        f"({config['cpu_count']} cores, torch threads {config['torch_threads']}, load average at "
        f"the end {', '.join(f'{x:.1f}' for x in config['load_average_end'])}: the machine was "
        "shared with other jobs, so the times are upper bounds).",
        "",
        f"GC: `{config['gc_dir']}`; baseline: `{config['baseline_dir']}`; {config['dataset']} test "
        f"set.  {config['n_images']} attacked images (seeded random test images classified "
        f"correctly by both models, seed {config['seed']}), one random target class != label "
        "each, the same for all settings and both models.  Carlini-Wagner L2 "
        f"(training/attacks.py): Adam lr {config['lr']}, {config['steps']} steps per round, "
        f"{config['rounds']} binary-search rounds over c (c0 = {config['c0']:g}; x10 until "
        "success, then bisection), best (smallest L2) successful iterate; kappa = inf: no cap "
        "on the margin, run to the fixed step budget (last iterate; failures rerun with 10 c).",
        "",
        "Every adversarial is a real 8-bit image: the attack forwards the nearest uint8 image "
        "at each step (straight-through gradient), the result is quantised by `quantize_unit` "
        "(round(256 x - 1/2), the inverse of `pixels_to_unit`), success is re-checked on the "
        "served answer, and L2 is measured on the quantised image in [0, 1] pixel units.",
        "",
        _detect_paragraph(config["detect_statistics"]),
        "",
        "Low-confidence answer: top-1 probability < "
        f"{config['low_confidence_threshold']:g} (a user-facing threshold, not a test; on clean "
        "test images it covers the share given below).  kappa is in logit units: the GC's "
        "logits are -||z - mu_y||^2/2 + log p(y), so kappa = 1 asks for posterior odds of at "
        "least e between the target and the runner-up, kappa = 10 for e^10.",
        "",
        "## In-distribution calibration (clean test images)",
        "",
        f"- GC accuracy {clean['gc_accuracy']:.4f}, baseline accuracy {clean['dc_accuracy']:.4f} "
        f"({clean['n_test']} test images).",
        f"- Attack flag (`{clean['attack_statistic']}` p < {clean['attack_alpha']:g}): "
        f"{clean['attack_flag_rate']:.4f} of clean test images (99% binomial interval "
        f"{clean['attack_flag_interval_99'][0]:.4f}-{clean['attack_flag_interval_99'][1]:.4f}; "
        f"calibrated: {clean['attack_flag_calibrated']}).",
        f"- OoD rejection (`{clean['ood_statistic']}` p < {clean['ood_alpha']:g}): "
        f"{clean['ood_reject_rate']:.4f}; not accepted (rejected or flagged): "
        f"{clean['caught_rate']:.4f}.",
        f"- Low-confidence answers (top-1 < {config['low_confidence_threshold']:g}): "
        f"{clean['low_confidence_rate']:.4f}.",
        "",
        "## Attacks on the GC",
        "",
        "success: share of attacked images whose served answer (uint8 image) is the target.  "
        "L2 over successful adversarials.  AUC (%): clean test set vs successful adversarials, "
        "score -log p, for the served attack p-value, its components class_distance (dist.), "
        "logit_margin (margin) and complexity_excess (cx), the production OoD p-value and the "
        "paper's typicality p-value.  flagged / rejected / caught: share of successful "
        "adversarials with attack p < alpha / OoD p < alpha / a served decision other than "
        "accepted.  low-conf: share with top-1 probability < "
        f"{config['low_confidence_threshold']:g}"
        " (kappa <= 1).  z2: mean squared z-score of typicality / class_distance / logit_margin "
        "as L_detect counts it (one-sided for logit_margin: the excess only; clean: about 1 "
        "for two-sided statistics, about 0.5 for one-sided ones).",
        "",
        "| kappa | d | success | mean L2 | AUC attack | AUC dist. | AUC margin | AUC cx | "
        "AUC prod. OoD | AUC typicality | flagged | rejected | caught | low-conf | mean top-1 | "
        "z2 typ. | z2 dist. | z2 margin | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["gc"]:
        lines.append(
            f"| {row['kappa']} | {row['d']:g} | {_fmt(row['success_rate'], percent=True)} | "
            f"{_fmt(row['mean_l2'])} | {_fmt(row['auc_attack'], 1)} | "
            f"{_fmt(row.get('auc_class_distance'), 1)} | {_fmt(row.get('auc_logit_margin'), 1)} | "
            f"{_fmt(row.get('auc_complexity_excess'), 1)} | "
            f"{_fmt(row['auc_production_ood'], 1)} | {_fmt(row['auc_typicality'], 1)} | "
            f"{_fmt(row['flagged_rate'], percent=True)} | "
            f"{_fmt(row['rejected_rate'], percent=True)} | "
            f"{_fmt(row['caught_rate'], percent=True)} | "
            f"{_fmt(row['low_confidence_rate'], percent=True)} | {_fmt(row['mean_top1'])} | "
            f"{_fmt(row['typicality_z2'], 2)} | {_fmt(row['class_distance_z2'], 2)} | "
            f"{_fmt(row.get('logit_margin_z2'), 2)} | "
            f"{row['seconds']:.0f} |"
        )
    if result["baseline"]:
        lines += _baseline_section(result)
    lines += ["", f"Total runtime: {result['runtime_seconds']:.0f} s.", ""]
    text = "\n".join(lines)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def _baseline_section(result: dict) -> list[str]:
    lines = [
        "",
        "## Discriminative baseline (same images, targets and attack, d = 0)",
        "",
        "Ratio: mean L2 of the GC (d = 0) over mean L2 of the baseline, on the images both "
        "attacks fooled (paper: the GC needs about 2x the perturbation).  kappa is in logit "
        "units; the two models' logits are not on a common scale, so compare rows with care.",
        "",
        "| kappa | DC success | DC mean L2 | GC success (d=0) | GC mean L2 (d=0) | paired | "
        "GC L2 paired | DC L2 paired | ratio GC/DC | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    gc_d0 = {row["kappa"]: row for row in result["gc"] if row["d"] == 0}
    for row in result["baseline"]:
        gc = gc_d0.get(row["kappa"], {})
        lines.append(
            f"| {row['kappa']} | {_fmt(row['success_rate'], percent=True)} | "
            f"{_fmt(row['mean_l2'])} | {_fmt(gc.get('success_rate'), percent=True)} | "
            f"{_fmt(gc.get('mean_l2'))} | {row.get('paired', '-')} | "
            f"{_fmt(row.get('gc_mean_l2_paired'))} | {_fmt(row.get('dc_mean_l2_paired'))} | "
            f"{_fmt(row.get('l2_ratio_gc_over_dc'), 2)} | {row['seconds']:.0f} |"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    return add_attack_arguments(argparse.ArgumentParser(prog="python -m training.attack_eval"))


def run(args: argparse.Namespace, command: str) -> dict:
    torch.set_num_threads(args.threads)
    result = evaluate_attacks(
        args.model,
        args.baseline,
        n_images=args.n,
        steps=args.steps,
        rounds=args.rounds,
        c0=args.c0,
        seed=args.seed,
        data_dir=args.data_dir,
        settings=[(kappa, d) for kappa in args.kappas for d in args.d],
        detect_statistics=args.detect_statistics,
        with_baseline=not args.no_baseline,
    )
    write_markdown(result, args.out, command)
    if args.json:
        import json

        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    run(args, " ".join(["python -m training.attack_eval", *argv]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
