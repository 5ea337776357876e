"""The README writer: one markdown section per part of the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.corruptions import CORRUPTIONS
from training.ood import OOD_SETS
from training.report.findings import _md_findings
from training.report.formatting import _beta_of, _fmt, _label
from training.report.scoring import OOD_METHODS


def _write_readme(results: dict, out: Path) -> Path:
    lines: list[str] = []
    for section in (
        _md_header,
        _md_models,
        _md_table2,
        _md_explain,
        _md_corruptions,
        _md_ood,
        _md_attacks,
        _md_findings,
    ):
        lines += section(results)
        lines.append("")
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def _md_header(results: dict) -> list[str]:
    runtime, options = results["runtime"], results["options"]
    compute = sum(runtime["compute_seconds_per_stage"].values())
    hardware = sorted({str(m["hardware"]) for m in results["models"] if m["hardware"]})
    minutes = sorted(
        {round(m["training_seconds"] / 60, 1) for m in results["models"] if m["training_seconds"]}
    )
    lines = [
        "# Trustworthiness report: IB-INN generative classifier vs. a CNN baseline",
        "",
        "Analogs of the paper's Sec. 4.1-4.3 (Table 2, Fig. 2, Figs. 3-5, Table 3, Fig. 7) for "
        f"our {results['dataset']} models.  Every number and figure on this page was produced "
        f"by\n\n    {results['command']}\n",
        "(`training/report/`; raw numbers in `results.json`).  Wall time of the run that "
        f"wrote this page: {runtime['wall_seconds_this_run'] / 60:.1f} min.  Compute time per "
        "stage (minutes; a stage's results are cached per model and reused by a rerun with "
        "identical settings, so this counts the run that computed them): "
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in runtime["compute_seconds_per_stage"].items())
        + f" (total {compute / 60:.1f}).",
        "",
        f"- **Training** (not part of this run): {', '.join(hardware) or '-'}, "
        f"{' / '.join(f'{m:g}' for m in minutes) or '-'} min per model (each model's command "
        "and time below, from its `model.json`).",
        f"- **Everything else** (calibration, evaluation, corruptions, OoD, attacks, figures) "
        f"ran here on {runtime['cpu_count']} CPU cores, torch threads "
        f"{runtime['torch_threads']}, no GPU; the machine was shared with other jobs (load "
        f"average at the end {', '.join(f'{x:.1f}' for x in runtime['load_average_end'])}), "
        "so times are upper bounds.",
        f"- Test images: {results['n_test']} for Table 2 and as the clean reference of every "
        f"OoD AUC; {options['n_corrupt']} per corruption type and severity "
        f"(severities {', '.join(map(str, options['severities']))}); {options['n_ood']} per OoD "
        "set.",
    ]
    if options["quick"]:
        lines += [
            "",
            "> **Quick mode**: tiny subsets and attack budget, calibration on a "
            f"{options['calibration_size']}-image prefix of the held-out split.  The page checks "
            "the pipeline; its numbers are not results.",
        ]
    return lines


def _md_models(results: dict) -> list[str]:
    lines = [
        "## Models",
        "",
        "IB-INNs are used through calibrated copies (`trustgc calibrate` = "
        "`calibrate_artifact` on a copy; the sources are untouched).",
        "",
        "| model | beta | kind | parameters | training command | training time | hardware | "
        "epochs | calibration split (A / B) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in results["models"]:
        seconds = m["training_seconds"]
        split = m["calibration"] or {}
        lines.append(
            f"| `{m['name']}` | {m['label']} | {m['kind']} | {m['parameters'] / 1e6:.2f} M | "
            f"`{m['command']}` | "
            f"{_fmt(seconds / 60 if seconds else None, 1)} min | {m['hardware'] or '-'} | "
            f"{m['epochs_completed'] or '-'} | "
            f"{split.get('part_a', '-')} / {split.get('part_b', '-')} |"
        )
    return lines


def _md_table2(results: dict) -> list[str]:
    lines = [
        "## 1. General performance (Table 2 and Fig. 2 analogs)",
        "",
        f"{results['n_test']} test images.  L_X = -log q(x) / D in nats per dimension, L_Y the "
        "cross-entropy (no smoothing), bits/dim of the [0, 1] image, top-1 ECE with 15 equal "
        "bins, the authors' one-vs-rest ECE (17+ fine bins, sparse bins dropped), OCE = error "
        "rate among predictions with confidence >= 99.7 % divided by 0.003 (`-`: no such "
        "prediction).  (training/metrics.py)",
        "",
        "| model | L_X | L_Y | bits/dim | accuracy (%) | top-1 ECE | authors' ECE | OCE | "
        "conf. >= 99.7 % (wrong) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in results["table2"].items():
        lines.append(
            f"| {_label(results, name)} | {_fmt(m.get('l_x'), 3)} | {_fmt(m['l_y'], 3)} | "
            f"{_fmt(m.get('bits_per_dim'), 3)} | {_fmt(m['accuracy'], 2, 100)} | "
            f"{_fmt(m['ece_top1'], 4)} | {_fmt(m['ece_authors'], 4)} | {_fmt(m['oce'], 2)} | "
            f"{m['n_confident']} ({m['n_confident_wrong']}) |"
        )
    if any(info["beta"] == 0 for info in results["models"]):
        lines += [
            "",
            "beta = 0 is a plain flow trained without labels (L_Y has weight 0): its class "
            "means are never pulled towards the classes, so its L_Y, accuracy and calibration "
            "describe an arbitrary assignment (the paper leaves them blank).",
        ]
    lines += [
        "",
        "![Fig. 2 analog](fig2_tradeoff.png)",
        "",
        "Fig. 2 analog: L_X vs L_Y (left) and bits/dim vs accuracy (right), one point per beta "
        "(numbers: beta); beta = 0 (plain flow) as a vertical, the baseline as a horizontal "
        "line.",
    ]
    return lines


def _md_explain(results: dict) -> list[str]:
    figures = results["explain"]
    if "skipped" in figures:
        return ["## 2. Explainability (Figs. 3-5 analogs)", "", f"Skipped: {figures['skipped']}"]
    lines = [
        "## 2. Explainability (Figs. 3-5 analogs)",
        "",
        f"Model `{figures['model']}` (trustgc/explain.py, trustgc/plots.py).",
        "",
        "Fig. 3 analog, decision space (horizontal: the axis through the top-2 class means, "
        "vertical: distance from that axis within the span of the top-5 means; 90 % ellipses):",
        "",
    ]
    for case, item in figures["decision_space"].items():
        lines.append(
            f"- {case.replace('_', ' ')}: predicted {item['prediction']} "
            f"(q = {item['probability']:.3f}), OoD p = {item['ood_p_value']:.4f}, served "
            f"decision `{item['decision']}`  \n  ![{case}]({item['file']})"
        )
    pair = " / ".join(figures["closest_pair"])
    lines += [
        "",
        "Fig. 4 analog, class similarity (expected pairwise posterior from the distance of the "
        f"class means): closest pair {pair} at distance {figures['closest_distance']:.2f}, "
        f"largest distance {figures['farthest_distance']:.2f}.",
        "",
        "![Fig. 4 analog](fig4_class_similarity.png)",
        "",
        "Fig. 5 analog, posterior heatmaps (each map sums exactly to log q(y|x); top 3 classes):",
        "",
    ]
    for item in figures["heatmaps"]:
        lines.append(f"- test image {item['index']} ({item['label']}): ![]({item['file']})")
    return lines


def _md_corruptions(results: dict) -> list[str]:
    summary, options = results["corruptions"], results["options"]
    lines = [
        "## 3. Robustness",
        "",
        "### 3.1 Corrupted images (Table 3 analog)",
        "",
        f"{options['n_corrupt']} seeded random test images, each corruption type at severities "
        f"{', '.join(map(str, options['severities']))} (training/corruptions.py; `trustgc "
        "corrupt` writes any one of them).  Error = top-1 error (%); CE_f = sum_s E_sf(model) / "
        "sum_s E_sf(baseline), **mCE** = mean_f CE_f (%, the baseline is 100 by definition; the "
        "paper normalised by AlexNet); **rel. mCE** likewise with the clean error subtracted "
        "from each E_sf (types where the baseline does not degrade are left out); **Δ entropy** "
        "= mean predictive entropy (nats) on corrupted minus clean images; **OoD** = ROC-AUC "
        "(%) of the production OoD statistic, all severities of a type pooled against the "
        f"{results['n_test']} clean test images, averaged over types.",
        "",
        "| model | clean error | corruption error | mCE | rel. mCE | Δ entropy | OoD (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        if _beta_of(results, name) == 0:  # no classifier: only the OoD column means something
            lines.append(
                f"| beta=0 (no classifier) | - | - | - | - | - | {_fmt(row['auc_mean'], 1)} |"
            )
            continue
        lines.append(
            f"| {_label(results, name)} | {_fmt(row['clean_error'], 1, 100)} | "
            f"{_fmt(row['corruption_error'], 1, 100)} | {_fmt(row['mce'], 1)} | "
            f"{_fmt(row['relative_mce'], 1)} | {_fmt(row['entropy_increase'], 3)} | "
            f"{_fmt(row.get('auc_mean'), 1)} |"
        )
    short = [c.replace("_noise", "").replace("_blur", "").split("_")[0] for c in CORRUPTIONS]
    header = "| model | " + " | ".join(short) + " |"
    rule = "|---" * (len(CORRUPTIONS) + 1) + "|"
    lines += ["", "OoD ROC-AUC (%) per corruption (production statistic):", "", header, rule]
    for name, row in summary.items():
        if "auc_per_type" in row:
            cells = " | ".join(_fmt(row["auc_per_type"][c], 1) for c in CORRUPTIONS)
            lines.append(f"| {_label(results, name)} | {cells} |")
    lines += ["", "Error (%) per corruption, mean over severities:", "", header, rule]
    for name, row in summary.items():
        if _beta_of(results, name) == 0:
            continue
        cells = " | ".join(_fmt(row["error_per_type"][c], 1, 100) for c in CORRUPTIONS)
        lines.append(f"| {_label(results, name)} | {cells} |")
    lines += [
        "",
        "Corruption parameters: the authors' CIFAR-10-C settings (made for 32x32 images), "
        "lengths marked `*` scaled by image size / 32.  Where we differ from their code "
        "(details in the docstring of training/corruptions.py):",
        "",
        "- **frost**: no frost photographs here, so a procedural texture stands in: a rough "
        "diamond-square fractal (patchy ice), its ridges (thin bright veins) and short bright "
        "crystal needles (sparse seeds smeared along two random directions), mixed and clipped "
        "to [0, 1], then blended as the reference does (image weight x image + frost weight x "
        "texture);",
        "- **elastic_transform**: the reference severities are not ordered (severity 1 has the "
        "largest affine warp and no elastic part), so ours grow monotonically: affine jitter, "
        "displacement (normalised to the given standard deviation) and roughness all increase;",
        "- **motion_blur** and the snow streaks: ImageMagick's one-sided Gaussian line kernel "
        "implemented directly (no Wand); **zoom_blur**: centred bilinear zooms; **fog**: "
        "fractal size the next power of two >= the image size;",
        "- mean absolute change grows with severity for every type except glass blur (the "
        "reference's pre-blur at severities 2-3 smooths the pixel shuffling) and frost (the "
        "image weight falls while the frost weight plateaus); severity 5 > severity 1 always "
        "(tests/training/test_corruptions.py).",
        "",
        results["parameter_table"],
        "",
        "![corruption examples](corruption_examples.png)",
    ]
    return lines


def _md_ood(results: dict) -> list[str]:
    sets = list(OOD_SETS)
    lines = [
        "### 3.2 Out-of-distribution sets",
        "",
        f"ROC-AUC (%) of {results['options']['n_ood']} images per OoD set (training/ood.py) "
        f"against the {results['n_test']} clean test images.  production: the served OoD "
        "p-value (combined_ood_background with a background flow, else combined_ood); paper: "
        "the two-sided typicality test; 1-sided: raw -log q(x); max-post.: -max_y log q(y|x) "
        "(the only score of the baseline).",
        "",
        "| model | score | " + " | ".join(sets) + " | mean |",
        "|---|---" * 1 + "|---" * (len(sets) + 1) + "|",
    ]
    names = {
        "production": "production",
        "paper_two_sided": "paper",
        "one_sided_likelihood": "1-sided",
        "max_posterior": "max-post.",
    }
    for name, rows in results["ood"].items():
        methods = [m for m in OOD_METHODS if any(m in r for r in rows.values())]
        for method in methods:
            values = [rows[s].get(method) for s in sets]
            found = [v for v in values if v is not None]
            mean = float(np.mean(found)) if found else None
            cells = " | ".join(_fmt(v, 1) for v in values)
            lines.append(
                f"| {_label(results, name)} | {names[method]} | {cells} | {_fmt(mean, 1)} |"
            )
    missing = {
        s: r["error"] for rows in results["ood"].values() for s, r in rows.items() if "error" in r
    }
    for name, error in missing.items():
        lines.append(f"\n`{name}` not available: {error}")
    return lines


def _md_attacks(results: dict) -> list[str]:
    attacks, options = results["attacks"], results["options"]
    lines = ["### 3.3 Adversarial attacks (Fig. 7 analog)", ""]
    if "skipped" in attacks:
        return lines + [f"Skipped: {attacks['skipped']}"]
    done = {n: r for n, r in attacks["models"].items() if "gc" in r}
    lines += [
        "Carlini-Wagner L2, targeted (random target != label), through "
        "`training.attack_eval.evaluate_attacks` (training/attacks.py; docs there).  **Reduced "
        f"budget for 2 CPU cores**: {options['attack_n']} images per setting (correct for both "
        f"models), {options['attack_steps']} Adam steps x {options['attack_rounds']} "
        "binary-search rounds over c, for the betas "
        f"{', '.join(_label(results, n) for n in attacks['models'])} only; detection AUC "
        "against the "
        f"first {options['attack_clean']} clean test images.  Mean L2 over successful "
        "adversarials (8-bit images, [0, 1] pixel units).  AUC (%, clean vs successful "
        "adversarials): the served attack p-value (`combined_attack`: class distance and logit "
        "margin), the production OoD p-value and the paper's two-sided typicality test; caught: "
        "share not accepted.",
        "",
    ]
    for name, row in attacks["models"].items():
        if "skipped" in row:
            lines.append(f"- `{name}`: skipped: {row['skipped']}")
    if not done:
        return lines
    lines += [
        "![Fig. 7 analog](fig7_attacks.png)",
        "",
        "| model | kappa | d | success | mean L2 | AUC attack | AUC prod. OoD | AUC paper test "
        "| caught |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in done.items():
        for r in row["gc"]:
            lines.append(
                f"| {_label(results, name)} | {r['kappa']} | {r['d']:g} | "
                f"{_fmt(r['success_rate'], 0, 100)} % | {_fmt(r['mean_l2'], 3)} | "
                f"{_fmt(r['auc_attack'], 1)} | {_fmt(r['auc_production_ood'], 1)} | "
                f"{_fmt(r['auc_typicality'], 1)} | {_fmt(r['caught_rate'], 0, 100)} % |"
            )
    lines += [
        "",
        "Baseline (same images and targets, d = 0); ratio = GC mean L2 / baseline mean L2 on "
        "the images both attacks fooled (kappa is in logit units, which differ between models):",
        "",
        "| attacked with | kappa | baseline success | baseline mean L2 | GC/baseline L2 ratio |",
        "|---|---|---|---|---|",
    ]
    for name, row in done.items():
        for r in row["baseline"]:
            lines.append(
                f"| {_label(results, name)} images | {r['kappa']} | "
                f"{_fmt(r['success_rate'], 0, 100)} % | {_fmt(r['mean_l2'], 3)} | "
                f"{_fmt(r.get('l2_ratio_gc_over_dc'), 2)} |"
            )
    return lines
