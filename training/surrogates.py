"""A differentiable surrogate for the PNG code length of an 8-bit image.

The served statistics ``complexity_corrected`` and ``complexity_excess`` compare the model's code
length with L(x), the image's PNG size in bits.  PNG has no gradient, so an attacker who follows
only gradients cannot keep L(x) typical and the complexity tests catch them: that is gradient
obfuscation, not robustness.  A white-box evaluation needs a smooth stand-in for L(x).

How PNG codes an 8-bit image, and what the surrogate copies from it:

1. **Filtering.**  Each row is predicted from already coded neighbours with one of five filters
   (None, Sub: left, Up: above, Average: floor((left + up) / 2), Paeth: the neighbour closest to
   left + up - upleft), and the residual is stored modulo 256.  Pillow's encoder picks per row
   the filter whose residuals, read as signed bytes, have the smallest sum of absolute values
   (libpng's heuristic; it skips Average unless saving with ``optimize=True``).  The surrogate
   computes the residual maps, makes the same per-row choice (a discrete choice, taken on the
   current values without gradient) and keeps the chosen residuals *with* their gradient.
2. **Deflate** then codes the residual bytes: long runs of zeros are almost free, and a residual
   costs more bits the larger it is.  The surrogate's code length is

       bits = a * sum log2(1 + |r| / s) + b * sum r^2 / (r^2 + tau^2) + c

   over the chosen residuals r: a smooth log-magnitude cost plus a soft count of non-zero
   residuals (about b bits each), with a, b, c fitted by least squares to Pillow's exact PNG
   length on clean and perturbed training images (s from a small grid).
3. **Re-anchoring.**  The surrogate ranks images well but its absolute level drifts on images
   unlike its fit set.  :class:`AnchoredPngLength` adds a per-image offset, exact PNG length minus
   surrogate, refreshed every few attack steps, so the value an attacker steers follows the exact
   length while the gradient comes from the surrogate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import spearmanr
from torch import Tensor

from trustgc.preprocess import pixels_to_unit
from trustgc.trust.statistics import png_code_length_bits

__all__ = [
    "PNG_FILTERS",
    "PERTURBATIONS",
    "AnchoredPngLength",
    "PngSurrogate",
    "filter_residuals",
    "fit_png_surrogate",
    "perturbed_copies",
    "select_filters",
    "unit_to_pixel_values",
]

PNG_FILTERS = ("none", "sub", "up", "average", "paeth")
#: Perturbation families of the fit and test sets (see :func:`perturbed_copies`).
PERTURBATIONS = ("gaussian", "uniform", "sparse", "lowfreq")
#: Pillow's trial order (indices into PNG_FILTERS): None, Up, Sub, Paeth.
_ENCODER_ORDER = (0, 2, 1, 4)
_SCALE_GRID = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
_EPS = 1e-6


def unit_to_pixel_values(x: Tensor) -> Tensor:
    """[0, 1] images -> pixel values 256 x - 1/2: bin centres map to the integers 0..255.

    The inverse of :func:`trustgc.preprocess.pixels_to_unit`; continuous, so gradients pass.
    """
    return x * 256.0 - 0.5


def _wrap(residual: Tensor) -> Tensor:
    """Residual modulo 256 as a signed byte in [-128, 128]; the shift carries no gradient."""
    return residual - 256.0 * torch.round(residual / 256.0).detach()


def filter_residuals(values: Tensor) -> Tensor:
    """Pixel values (B, C, H, W) -> the five filters' residuals (B, 5, C, H, W), wrapped.

    Neighbours outside the image are 0, as in PNG.  For C > 1 the left neighbour is the same
    channel of the previous pixel (PNG filters bytes bpp apart).  Average's floor and Paeth's
    choice of neighbour are taken on the current values without gradient; the residual keeps
    the gradient of the pixel and of the neighbour it is predicted from.
    """
    if values.dim() != 4:
        raise ValueError(f"expected (B, C, H, W), got {tuple(values.shape)}")
    left = F.pad(values, (1, 0, 0, 0))[..., :-1]
    up = F.pad(values, (0, 0, 1, 0))[..., :-1, :]
    upleft = F.pad(values, (1, 0, 1, 0))[..., :-1, :-1]
    half = (left + up) / 2.0
    average = half - (half - torch.floor(half)).detach()
    with torch.no_grad():
        estimate = left + up - upleft
        to_left, to_up, to_upleft = (
            (estimate - left).abs(),
            (estimate - up).abs(),
            (estimate - upleft).abs(),
        )
        pick_left = (to_left <= to_up) & (to_left <= to_upleft)
        pick_up = ~pick_left & (to_up <= to_upleft)
    paeth = torch.where(pick_left, left, torch.where(pick_up, up, upleft))
    predictions = (torch.zeros_like(values), left, up, average, paeth)
    return torch.stack([_wrap(values - prediction) for prediction in predictions], dim=1)


def select_filters(residuals: Tensor) -> Tensor:
    """Per row the filter Pillow's encoder picks (B, H), as an index into :data:`PNG_FILTERS`.

    It tries None, Up, Sub, Paeth in that order (Average only when saving with
    ``optimize=True``, which the service does not) and keeps the first with the smallest sum of
    |signed residual|: it replaces its choice only on a strictly smaller sum.
    """
    costs = residuals.detach().abs().sum(dim=(2, 4))[:, _ENCODER_ORDER]  # (B, 4, H)
    order = torch.tensor(_ENCODER_ORDER, device=residuals.device)
    return order[costs.argmin(dim=1)]  # argmin returns the first minimum


def _chosen_residuals(values: Tensor) -> Tensor:
    """The residuals of each row's chosen filter, (B, C, H, W), with their gradient."""
    residuals = filter_residuals(values)
    choice = select_filters(residuals)  # (B, H)
    index = choice[:, None, None, :, None].expand(-1, 1, values.shape[1], -1, values.shape[3])
    return residuals.gather(1, index)[:, 0]


def _features(residuals: Tensor, scale: float, tau: float) -> Tensor:
    """(B, 2): sum log2(1 + |r| / s) and the soft count of non-zero residuals."""
    magnitude = torch.sqrt(residuals**2 + _EPS)
    log_cost = torch.log2(1.0 + magnitude / scale).flatten(1).sum(dim=1)
    nonzero = (residuals**2 / (residuals**2 + tau**2)).flatten(1).sum(dim=1)
    return torch.stack([log_cost, nonzero], dim=1)


class PngSurrogate(BaseModel):
    """bits = a * sum log2(1 + |r| / s) + b * sum r^2 / (r^2 + tau^2) + c (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = Field(gt=0)  # s, pixel-value units
    tau: float = Field(default=0.3, gt=0)  # soft non-zero width: integer residuals count ~0.92
    bits_per_log: float  # a
    bits_per_nonzero: float  # b
    offset_bits: float  # c: PNG signature, chunks, zlib header and the like
    fit_spearman: float | None = None  # rank correlation on the fit set, for the record

    def bits(self, x: Tensor) -> Tensor:
        """Surrogate PNG length in bits of [0, 1] images x (B, C, H, W), differentiable."""
        features = _features(_chosen_residuals(unit_to_pixel_values(x)), self.scale, self.tau)
        return (
            self.bits_per_log * features[:, 0]
            + self.bits_per_nonzero * features[:, 1]
            + self.offset_bits
        )


def _unit(pixels: np.ndarray) -> Tensor:
    return pixels_to_unit(torch.from_numpy(pixels))


def fit_png_surrogate(pixels: np.ndarray, tau: float = 0.3) -> PngSurrogate:
    """Least-squares fit of (a, b, c) to Pillow's PNG length of uint8 images (N, C, H, W),
    for each s of a small grid; keeps the s with the smallest squared error."""
    exact = png_code_length_bits(pixels)
    with torch.no_grad():
        residuals = _chosen_residuals(unit_to_pixel_values(_unit(pixels)))
    best: tuple[float, PngSurrogate] | None = None
    for scale in _SCALE_GRID:
        features = _features(residuals, scale, tau).double().numpy()
        design = np.column_stack([features, np.ones(len(exact))])
        coefficients, *_ = np.linalg.lstsq(design, exact, rcond=None)
        error = float(np.sum((design @ coefficients - exact) ** 2))
        if best is None or error < best[0]:
            surrogate = PngSurrogate(
                scale=scale,
                tau=tau,
                bits_per_log=float(coefficients[0]),
                bits_per_nonzero=float(coefficients[1]),
                offset_bits=float(coefficients[2]),
                fit_spearman=float(spearmanr(design @ coefficients, exact).statistic),
            )
            best = (error, surrogate)
    assert best is not None
    return best[1]


def perturbed_copies(
    pixels: np.ndarray,
    sizes: Sequence[float] = (2.0, 8.0, 24.0),
    kinds: Sequence[str] = PERTURBATIONS,
    seed: int = 0,
) -> np.ndarray:
    """Clean uint8 images plus one perturbed copy per (kind, size), stacked (N * (1 + k * s)).

    size is a standard deviation in pixel-value units (0..255): ``gaussian`` i.i.d. noise,
    ``uniform`` i.i.d. noise with that standard deviation, ``sparse`` noise of 4 x that size on
    a random 1/16 of the pixels, ``lowfreq`` Gaussian noise on a 7 x 7 grid upsampled bilinearly
    (smooth, compressible: what a low-frequency attack adds).
    """
    unknown = set(kinds) - set(PERTURBATIONS)
    if unknown:
        raise ValueError(f"unknown perturbations {sorted(unknown)}; known: {PERTURBATIONS}")
    rng = np.random.default_rng(seed)
    base = pixels.astype(np.float64)
    out = [pixels]
    for kind in kinds:
        for size in sizes:
            if kind == "gaussian":
                noise = rng.normal(0.0, size, base.shape)
            elif kind == "uniform":
                noise = rng.uniform(-math.sqrt(3) * size, math.sqrt(3) * size, base.shape)
            elif kind == "sparse":
                noise = rng.normal(0.0, 4 * size, base.shape) * (rng.random(base.shape) < 1 / 16)
            else:
                n, c, h, w = base.shape
                coarse = torch.from_numpy(rng.normal(0.0, size, (n, c, 7, 7)))
                noise = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
                noise = noise.numpy()
            out.append(np.clip(np.round(base + noise), 0, 255).astype(np.uint8))
    return np.concatenate(out)


class AnchoredPngLength:
    """The surrogate plus a per-image offset that follows the exact PNG length.

    ``anchor(x)`` sets offset = exact(x) - surrogate(x) for the 8-bit images nearest to x;
    ``__call__(x)`` returns surrogate(x) + offset (the offset carries no gradient).  Called every
    few attack steps, the value the attacker steers stays within the surrogate's short-range
    error of the served PNG length.
    """

    def __init__(self, surrogate: PngSurrogate, batch_size: int) -> None:
        self.surrogate = surrogate
        self.offset = torch.zeros(batch_size, dtype=torch.float64)

    def anchor(self, x: Tensor, rows: Tensor | None = None) -> None:
        """Re-anchor the offsets of ``rows`` (all when None) on images x (len(rows), C, H, W)."""
        with torch.no_grad():
            values = unit_to_pixel_values(x.detach())
            pixels = torch.clamp(torch.round(values), 0, 255).to(torch.uint8).cpu().numpy()
            exact = torch.from_numpy(png_code_length_bits(pixels))
            estimate = self.surrogate.bits(x.detach()).double().cpu()
        target = slice(None) if rows is None else rows
        self.offset[target] = exact - estimate

    def __call__(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        offset = self.offset if rows is None else self.offset[rows]
        return self.surrogate.bits(x) + offset.to(device=x.device, dtype=x.dtype)
