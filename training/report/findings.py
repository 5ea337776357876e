"""Section 4 of the README: the findings compared with the paper (rank correlations)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from training.report.formatting import _fmt, _label


def _spearman(pairs: list[tuple[float, float | None]]) -> float | None:
    from scipy.stats import spearmanr

    points = [(x, y) for x, y in pairs if y is not None and math.isfinite(y)]
    if len(points) < 3:
        return None
    rho = spearmanr([p[0] for p in points], [p[1] for p in points]).statistic
    return float(rho) if math.isfinite(rho) else None


def _series(results: dict, value: Callable[[str], float | None]) -> list[tuple[float, Any]]:
    """(beta, value) for every GC with beta > 0 (inf ranks last)."""
    return [
        (m["beta"], value(m["name"])) for m in results["models"] if m["beta"] not in (None, 0.0)
    ]


def _listing(pairs, digits=1, scale=1.0) -> str:
    return ", ".join(
        f"{'inf' if math.isinf(b) else f'{b:g}'}: {_fmt(v, digits, scale)}" for b, v in pairs
    )


def _verdict(rho: float | None, sign: int) -> str:
    """Does a rank correlation with beta have the paper's direction (sign +1 or -1)?"""
    if rho is None:
        return "not measured"
    if sign * rho >= 0.7:
        return "**agrees**"
    return "**partly agrees** (weak trend)" if sign * rho > 0 else "**differs**"


def _md_findings(results: dict) -> list[str]:
    t2, corr = results["table2"], results["corruptions"]
    base = next((m["name"] for m in results["models"] if m["beta"] is None), None)
    flow = next((m["name"] for m in results["models"] if m["beta"] == 0), None)

    def ood_mean(name: str, method: str) -> float | None:
        values = [r[method] for r in results["ood"][name].values() if method in r]
        return float(np.mean(values)) if values else None

    series = {
        "acc": _series(results, lambda n: t2[n]["accuracy"]),
        "bpd": _series(results, lambda n: t2[n].get("bits_per_dim")),
        "ece": _series(results, lambda n: t2[n]["ece_top1"]),
        "ece_a": _series(results, lambda n: t2[n]["ece_authors"]),
        "ood_prod": _series(results, lambda n: ood_mean(n, "production")),
        "ood_paper": _series(results, lambda n: ood_mean(n, "paper_two_sided")),
        "corr_auc": _series(results, lambda n: corr[n].get("auc_mean")),
        "mce": _series(results, lambda n: corr[n]["mce"]),
        "entropy": _series(results, lambda n: corr[n]["entropy_increase"]),
    }
    rho = {key: _spearman(values) for key, values in series.items()}
    r = {key: _fmt(value, 2) for key, value in rho.items()}
    lines = [
        "## 4. Comparison with the paper",
        "",
        "Generated from the tables above.  rho: Spearman rank correlation with beta over the "
        "GCs with beta > 0; a verdict **agrees** when the paper's direction holds with "
        "|rho| >= 0.7.  The paper's numbers are ImageNet (ResNet-50 baseline); ours are "
        f"{results['dataset']} with a small CNN baseline trained for the same time.",
        "",
        f"1. **Accuracy rises with beta; bits/dim get worse** (paper: 67.3 % at beta = 1 to "
        f"76.3 % at inf, 1.1 points below ResNet-50; bits/dim 4.3 to 47).  Ours: accuracy "
        f"{_listing(series['acc'], 2, 100)}"
        + (f", baseline {_fmt(t2[base]['accuracy'], 2, 100)}" if base else "")
        + f" (rho = {r['acc']}): {_verdict(rho['acc'], 1)}; bits/dim "
        f"{_listing(series['bpd'], 2)} (rho = {r['bpd']}): {_verdict(rho['bpd'], 1)}.",
        f"2. **Calibration improves at low beta** (paper: OCE 3.9 at beta = 1 to 5.1 at inf, "
        f"ResNet 6.8).  Ours: top-1 ECE {_listing(series['ece'], 4)} (rho = {r['ece']}), "
        f"authors' ECE rho = {r['ece_a']}: {_verdict(rho['ece'], 1)}.  OCE cannot rank our "
        "GCs: "
        + ", ".join(
            f"{_label(results, n)} {t2[n]['n_confident_wrong']} wrong of {t2[n]['n_confident']}"
            for n in t2
            if n not in (flow,)
        )
        + " test predictions at >= 99.7 % confidence; the baseline's OCE of "
        + (_fmt(t2[base]["oce"], 1) if base else "-")
        + " against the GCs' <= "
        + _fmt(max((t2[n]["oce"] or 0.0) for n in t2 if n not in (flow, base)), 1)
        + " repeats the paper's ordering (GCs less overconfident than the DC).",
        f"3. **OoD detection is best at low beta** (paper, Table 3: corruption OoD AUC 67.9 at "
        f"beta = 1 down to 44.2 at inf, 77.5 for the plain flow).  Ours, mean AUC over the "
        f"corruptions: {_listing(series['corr_auc'])} (rho = {r['corr_auc']}): "
        f"{_verdict(rho['corr_auc'], -1)}; over the OoD sets with the paper's two-sided test: "
        f"{_listing(series['ood_paper'])} (rho = {r['ood_paper']}): "
        f"{_verdict(rho['ood_paper'], -1)}; with the production statistic: "
        f"{_listing(series['ood_prod'])} (rho = {r['ood_prod']}), nearly flat until it drops "
        "at beta = inf."
        + (
            f"  The plain flow (beta = 0) scores {_fmt(corr[flow].get('auc_mean'), 1)} on the "
            "corruptions, "
            + (
                "the best, as in the paper."
                if all((corr[flow].get("auc_mean") or 0) >= (v or 0) for _, v in series["corr_auc"])
                else "below the best GC: **differs** from the paper, where it was best."
            )
            if flow
            else ""
        ),
        f"4. **Corruption robustness is no better than the discriminative baseline's** (paper: "
        "mCE 98.5 at beta = 1 falling to 83.4 at inf, ResNet-50 78.2, all normalised by "
        "AlexNet; rel. mCE 113-119 vs 109).  Ours, mCE normalised by our baseline (= 100): "
        f"{_listing(series['mce'])} (rho = {r['mce']}).  The fall with beta "
        f"{_verdict(rho['mce'], -1)}; "
        + _robustness_verdict(series["mce"])
        + f"  Entropy increase on corrupted images: {_listing(series['entropy'], 3)}"
        + (f", baseline {_fmt(corr[base]['entropy_increase'], 3)}" if base else "")
        + " (paper: GCs 1.58-1.81 vs ResNet 1.51): "
        + (
            "**agrees**, every GC becomes more uncertain than the baseline."
            if base
            and all(
                v is not None and v > corr[base]["entropy_increase"] for _, v in series["entropy"]
            )
            else "**differs** for some betas."
        ),
        _attack_finding(results),
    ]
    return lines


def _robustness_verdict(mce: list[tuple[float, Any]]) -> str:
    better = [p for p in mce if p[1] is not None and p[1] < 100]
    if not better:
        return "no GC beats the baseline: **agrees**."
    return (
        f"but the GCs with beta in {{{', '.join(_listing([p]).split(':')[0] for p in better)}}} "
        "have a *lower* corruption error than our CNN baseline: **differs**.  Our baseline is "
        "a small CNN trained in the same 6.5 min GPU budget, not a ResNet-50, and our "
        "corruptions act on 28x28 grey images, so this is a statement about this pair of "
        "models."
    )


def _attack_finding(results: dict) -> str:
    attacks = results["attacks"]
    text = (
        "5. **The GC needs larger perturbations, and detects attacks** (paper: about 2x the "
        "ResNet's L2; detection partly survives d = 1000).  "
    )
    done = {n: r for n, r in attacks.get("models", {}).items() if "gc" in r}
    if not done:
        return text + f"Not measured ({attacks.get('skipped', 'no attack succeeded')})."
    ratios = [
        b["l2_ratio_gc_over_dc"]
        for row in done.values()
        for b in row["baseline"]
        if b.get("l2_ratio_gc_over_dc") is not None
    ]
    base_success = [b["success_rate"] for row in done.values() for b in row["baseline"]]

    def auc_range(key: str, kappas: tuple[str, ...], ds: tuple[float, ...]) -> str:
        values = [
            g[key]
            for row in done.values()
            for g in row["gc"]
            if g["kappa"] in kappas and g["d"] in ds and g[key] is not None
        ]
        return f"{min(values):.0f}-{max(values):.0f}" if values else "-"

    z2 = [
        g["class_distance_z2"]
        for row in done.values()
        for g in row["gc"]
        if g["d"] > 0 and g["class_distance_z2"] is not None
    ]
    every_d = (0.0, 66.0, 1000.0)
    prod_low = auc_range("auc_production_ood", ("0.01", "1"), every_d)
    prod_inf = auc_range("auc_production_ood", ("inf",), every_d)
    text += (
        f"Ours: GC/baseline mean-L2 ratio on jointly fooled images "
        f"{min(ratios, default=math.nan):.2f}-{max(ratios, default=math.nan):.2f} "
        f"(per beta and kappa in the table above): "
        + ("**agrees**." if ratios and min(ratios) >= 1.5 else "**differs**, no 2x margin.")
        + f"  The served attack test (two-sided class distance) has AUC "
        f"{auc_range('auc_attack', ('0.01', '1'), (0.0,))} % for standard attacks with kappa "
        f"<= 1 and {auc_range('auc_attack', ('inf',), (0.0,))} % at kappa = inf, and "
        f"{auc_range('auc_attack', ('0.01', '1', 'inf'), (66.0, 1000.0))} % against the "
        "detection-aware attacks (d = 66, 1000): these push the class distance into the middle "
        "of its clean range (mean squared z-score "
        f"{min(z2, default=math.nan):.2f}-{max(z2, default=math.nan):.2f}, clean images about "
        "1), i.e. *more* typical than clean images, which a two-sided p-value cannot flag "
        f"(AUC < 50 %).  The production OoD p-value has AUC {prod_low} % for kappa <= 1 "
        "(d = 0, 66 and 1000: it also sees the low posterior of a near-boundary adversarial) "
        f"and {prod_inf} % at kappa = inf.  Budget caveat: the baseline attack succeeded on only "
        f"{min(base_success, default=0) * 100:.0f}-{max(base_success, default=0) * 100:.0f} % of "
        "the images within the reduced budget, so the ratios rest on few pairs."
    )
    return text
