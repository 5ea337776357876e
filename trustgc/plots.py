"""PNG figures of the explanations in :mod:`trustgc.explain`.

matplotlib is imported lazily inside each function (Agg backend), so importing this module has
no side effects and needs no display.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "EXPLANATION_PIXELS",
    "PValueTest",
    "plot_class_similarity",
    "plot_decision_space",
    "plot_explanation",
    "plot_heatmaps",
]

#: Size in pixels (width, height) of every :func:`plot_explanation` picture: the figure is drawn
#: at a fixed size (no tight bounding box), so pictures of any model line up.
EXPLANATION_PIXELS = (1250, 300)
_EXPLANATION_DPI = 100
_EXPLANATION_MAPS = 3
_P_FLOOR = 1e-4  # the p-value axis is logarithmic: smaller values are drawn at the floor


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, tight: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight" if tight else None)
    fig.clf()
    _pyplot().close(fig)
    return path


def _check_names(class_names: Sequence[str], count: int) -> None:
    if len(class_names) != count:
        raise ValueError(f"expected {count} class names, got {len(class_names)}")


def _upsample_nearest(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, h, w) -> (N, height, width) by nearest-neighbour index mapping."""
    rows = np.arange(height) * maps.shape[1] // height
    cols = np.arange(width) * maps.shape[2] // width
    return maps[:, rows][:, :, cols]


def _display_image(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) in [0, 1] -> (H, W) or (H, W, 3) float64."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(
            f"expected an image of shape (H, W), (H, W, 1) or (H, W, 3), got {image.shape}"
        )
    return image


def _draw_input_and_maps(axes, image: np.ndarray, maps: np.ndarray, titles: Sequence[str]):
    """Draw the input on ``axes[0]`` and ``maps`` (N, h, w), upsampled to the image size, on
    the next N axes with one diverging colour scale centred at 0; returns the last map's image
    (for a colour bar)."""
    maps = _upsample_nearest(maps, image.shape[0], image.shape[1])
    limit = float(np.abs(maps).max()) if maps.size else 1.0
    limit = limit or 1.0
    axes[0].imshow(np.clip(image, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0)
    axes[0].set_title("input")
    shown = None
    for ax, title, values in zip(axes[1:], titles, maps, strict=False):
        shown = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return shown


def plot_heatmaps(
    image: np.ndarray,
    heatmaps: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    top: int = 3,
) -> Path:
    """The image and the posterior heatmaps (K, H', W') of its ``top`` classes.

    Classes are ranked by sum_kl Q(k, l, y) = log q(y|x); maps are upsampled (nearest) to the
    image size and drawn with a diverging colormap centred at 0, shared across panels.
    """
    image = _display_image(image)
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    if heatmaps.ndim != 3:
        raise ValueError(f"expected heatmaps of shape (K, H', W'), got {heatmaps.shape}")
    _check_names(class_names, heatmaps.shape[0])
    top = max(1, min(int(top), heatmaps.shape[0]))
    log_posterior = heatmaps.sum(axis=(1, 2))
    order = np.argsort(-log_posterior)[:top]
    titles = [f"{class_names[cls]}\nq={np.exp(log_posterior[cls]):.3f}" for cls in order]

    plt = _pyplot()
    fig, axes = plt.subplots(1, top + 1, figsize=(2.6 * (top + 1), 2.8))
    shown = _draw_input_and_maps(axes, image, heatmaps[order], titles)
    fig.colorbar(shown, ax=list(axes[1:]), shrink=0.8)
    return _save(fig, path)


@dataclass(frozen=True)
class PValueTest:
    """One test of an answer drawn against its level: ``flagged`` is the answer's own verdict
    (p-value at or below alpha), passed in rather than recomputed here."""

    name: str
    p_value: float
    alpha: float
    flagged: bool


def plot_explanation(
    image: np.ndarray,
    heatmaps: np.ndarray,
    titles: Sequence[str],
    tests: Sequence[PValueTest],
    path: str | Path,
    heading: str = "",
) -> Path:
    """One image's explanation as a PNG of :data:`EXPLANATION_PIXELS`: the input, the posterior
    heatmaps of (at most 3) classes as given, most probable first, and the p-values of
    ``tests`` against their alphas.

    ``heatmaps`` (N, H', W') are Q(k, l, y) of :func:`trustgc.explain.posterior_heatmaps`,
    drawn on one colour scale centred at 0 (red above, blue below); ``titles`` label them.
    The p-value panel is logarithmic (values below 1e-4 at 1e-4): a bar per test, red when the
    test flagged the image, with its alpha as a black tick.
    """
    image = _display_image(image)
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    if heatmaps.ndim != 3 or not 1 <= heatmaps.shape[0] <= _EXPLANATION_MAPS:
        raise ValueError(
            f"expected 1 to {_EXPLANATION_MAPS} heatmaps of shape (N, H', W'), got {heatmaps.shape}"
        )
    if len(titles) != heatmaps.shape[0]:
        raise ValueError(f"expected {heatmaps.shape[0]} titles, got {len(titles)}")
    if not tests:
        raise ValueError("expected at least one p-value test")

    plt = _pyplot()
    width, height = EXPLANATION_PIXELS
    fig = plt.figure(figsize=(width / _EXPLANATION_DPI, height / _EXPLANATION_DPI))
    grid = fig.add_gridspec(1, _EXPLANATION_MAPS + 2, width_ratios=[1] * 4 + [1.6])
    axes = [fig.add_subplot(grid[0, i]) for i in range(_EXPLANATION_MAPS + 1)]
    _draw_input_and_maps(axes, image, heatmaps, titles)
    for ax in axes[1 + heatmaps.shape[0] :]:
        ax.axis("off")

    panel = fig.add_subplot(grid[0, -1])
    rows = np.arange(len(tests))
    values = [max(_P_FLOOR, min(1.0, t.p_value)) for t in tests]
    colours = ["tab:red" if t.flagged else "tab:green" for t in tests]
    panel.barh(rows, [v - _P_FLOOR for v in values], color=colours, left=_P_FLOOR)
    for row, test in zip(rows, tests, strict=True):
        alpha = max(_P_FLOOR, test.alpha)
        panel.plot([alpha, alpha], [row - 0.4, row + 0.4], color="black", linewidth=2)
        panel.annotate(
            f"p={test.p_value:.3g} vs alpha={test.alpha:g}",
            (_P_FLOOR, row + 0.45),
            fontsize=8,
            va="bottom",
        )
    panel.set_xscale("log")
    panel.set_xlim(_P_FLOOR, 1.0)
    panel.set_ylim(-0.6, len(tests) - 0.1)
    panel.set_yticks(rows, labels=[t.name for t in tests], fontsize=8)
    panel.set_xlabel("p-value (black: alpha)", fontsize=8)
    panel.tick_params(axis="x", labelsize=7)
    if heading:
        fig.suptitle(heading, fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.17, top=0.78, wspace=0.25)
    return _save(fig, path, tight=False)


def plot_decision_space(item: dict, class_names: Sequence[str], path: str | Path) -> Path:
    """One image's decision space (a dict from :func:`trustgc.explain.decision_space`).

    Class means are labelled points (top-1 red, top-2 blue, others grey) with their 90%
    ellipses; z is a black star.  The axes are scaled so that the ellipses look like circles.
    """
    missing = {"classes", "means_xy", "z_xy", "radius_horizontal", "radius_vertical"} - set(item)
    if missing:
        raise ValueError(f"decision-space item lacks keys {sorted(missing)}")
    classes = np.asarray(item["classes"])
    means = np.asarray(item["means_xy"], dtype=np.float64)
    z_xy = np.asarray(item["z_xy"], dtype=np.float64)
    if means.shape != (classes.size, 2) or z_xy.shape != (2,):
        raise ValueError(
            f"expected means_xy ({classes.size}, 2) and z_xy (2,), got {means.shape} and "
            f"{z_xy.shape}"
        )
    rx, ry = float(item["radius_horizontal"]), float(item["radius_vertical"])

    plt = _pyplot()
    from matplotlib.patches import Ellipse

    fig, ax = plt.subplots(figsize=(5.0, 4.0))
    colours = ["tab:red", "tab:blue"] + ["tab:gray"] * max(0, classes.size - 2)
    for (x, y), cls, colour in zip(means, classes, colours, strict=True):
        ax.add_patch(
            Ellipse((x, y), 2 * rx, 2 * max(ry, 1e-3), fill=False, color=colour, alpha=0.6)
        )
        ax.plot(x, y, "o", color=colour)
        name = class_names[int(cls)] if int(cls) < len(class_names) else str(int(cls))
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.plot(*z_xy, marker="*", color="black", markersize=14, linestyle="none", label="z")
    ax.set_xlabel("axis top-1 -> top-2")
    ax.set_ylabel("distance from axis")
    ax.legend(loc="best", fontsize=8)
    if ry > 0:
        ax.set_aspect(rx / ry, adjustable="datalim")
    ax.autoscale_view()
    return _save(fig, path)


def plot_class_similarity(matrix: np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """Expected pairwise posteriors (K, K) as a heatmap; NaN diagonal masked; values annotated
    when K <= 30."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square (K, K) matrix, got {matrix.shape}")
    count = matrix.shape[0]
    _check_names(class_names, count)

    plt = _pyplot()
    size = min(12.0, 1.5 + 0.55 * count)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    shown = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0.0, vmax=0.5)
    fig.colorbar(shown, ax=ax, label="expected pairwise posterior")
    if count <= 30:
        ax.set_xticks(range(count), labels=list(class_names), rotation=90, fontsize=8)
        ax.set_yticks(range(count), labels=list(class_names), fontsize=8)
        for i in range(count):
            for j in range(count):
                if np.isfinite(matrix[i, j]):
                    colour = "black" if matrix[i, j] > 0.3 else "white"
                    ax.text(
                        j,
                        i,
                        f"{matrix[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=colour,
                    )
    return _save(fig, path)
