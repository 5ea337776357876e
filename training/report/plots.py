"""The report's own matplotlib figures: trade-off (Fig. 2), attacks (Fig. 7), corruptions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.corruptions import CORRUPTIONS, corrupt


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_tradeoff(models, clean, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    gcs = [m for m in models if m.beta is not None]
    baseline = next((m for m in models if m.beta is None), None)
    for ax, (x_key, y_key, x_label, y_label) in zip(
        axes,
        (
            ("l_x", "l_y", "L_X (nats/dim)", "L_Y (cross-entropy)"),
            ("bits_per_dim", "accuracy", "bits/dim", "accuracy"),
        ),
        strict=True,
    ):
        points = [
            (clean[m.name]["metrics"][x_key], clean[m.name]["metrics"][y_key], m)
            for m in gcs
            if m.beta != 0
        ]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="tab:blue")
        for x, y, m in points:
            ax.annotate(m.label, (x, y), textcoords="offset points", xytext=(5, 5))
        for m in gcs:
            if m.beta == 0:
                ax.axvline(clean[m.name]["metrics"][x_key], ls=":", color="tab:green")
                ax.annotate("beta=0", (clean[m.name]["metrics"][x_key], ax.get_ylim()[1]))
        if baseline is not None:
            ax.axhline(clean[baseline.name]["metrics"][y_key], ls="--", color="tab:red")
            ax.annotate("baseline", (ax.get_xlim()[0], clean[baseline.name]["metrics"][y_key]))
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _plot_attacks(attacks: dict, path: Path) -> Path | None:
    rows = {n: r for n, r in attacks.get("models", {}).items() if "gc" in r}
    if not rows:
        return None
    plt = _pyplot()
    kappas = ("0.01", "1", "inf")
    fig, axes = plt.subplots(len(kappas), 2, figsize=(11, 3.0 * len(kappas)), squeeze=False)
    names = list(rows)
    labels = [_short(n) for n in names] + ["DC"]
    for i, kappa in enumerate(kappas):
        for j, metric in enumerate(("mean_l2", "auc_attack")):
            ax = axes[i, j]
            for k, d in enumerate((0.0, 66.0, 1000.0)):
                values = [_attack_value(rows[n]["gc"], kappa, d, metric) for n in names]
                if metric == "mean_l2":
                    values.append(_baseline_l2(rows, kappa) if d == 0 else None)
                else:
                    values.append(None)
                x = np.arange(len(values)) + (k - 1) * 0.27
                heights = [np.nan if v is None else v for v in values]
                ax.bar(x, heights, width=0.27, label=f"d={d:g}")
            ax.set_xticks(np.arange(len(labels)), labels)
            ax.set_title(f"kappa={kappa}: {'mean L2' if j == 0 else 'detection AUC (%)'}")
            if metric == "auc_attack":
                ax.axhline(50, ls=":", color="black")
                ax.set_ylim(0, 100)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _baseline_l2(rows: dict, kappa: str) -> float | None:
    """The baseline's mean L2 at ``kappa``, averaged over the runs next to each attacked GC
    (each run attacks the first images both that GC and the baseline classify correctly)."""
    values = [
        r["mean_l2"]
        for row in rows.values()
        for r in row["baseline"]
        if r["kappa"] == kappa and r["mean_l2"] is not None
    ]
    return float(np.mean(values)) if values else None


def _attack_value(rows: list[dict], kappa: str, d: float, metric: str):
    return next((r[metric] for r in rows if r["kappa"] == kappa and r["d"] == d), None)


def _short(name: str) -> str:
    return name.rsplit("beta_", 1)[-1] if "beta_" in name else name


def _plot_corruption_examples(image: np.ndarray, options, path: Path) -> Path:
    plt = _pyplot()
    columns = len(options.severities) + 1
    fig, axes = plt.subplots(len(CORRUPTIONS), columns, figsize=(1.1 * columns, 1.1 * 15))
    gray = image.shape[-1] == 1
    for row, name in enumerate(CORRUPTIONS):
        shown = [image] + [
            corrupt(image[None], name, s, options.seed)[0] for s in options.severities
        ]
        for col, picture in enumerate(shown):
            ax = axes[row, col]
            ax.imshow(picture[..., 0] if gray else picture, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, rotation=0, ha="right", fontsize=7)
            if row == 0:
                ax.set_title(
                    "clean" if col == 0 else f"s={options.severities[col - 1]}", fontsize=7
                )
    return _save(fig, path)
