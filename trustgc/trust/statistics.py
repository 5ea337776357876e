"""The statistic registry: every trust statistic and combination, declared once.

Each :class:`Statistic` names its suspicious tail, its array form over a batch's
:class:`~trustgc.inference.ModelOutputs` (and, for the complexity tests, the raw uint8 pixels),
a differentiable torch form over :class:`~trustgc.scoring.LatentScores` for the attacks (or,
where no gradient exists, the name of a smooth surrogate the attack code provides), a one-line
description, and whether it is another statistic's negation.  Each :class:`Combination` names
its components and how their p-values combine.  Calibration, p-values, the served components,
the attacks' L_detect, the attack evaluation and the report all read this module: adding a
statistic is one entry in :data:`STATISTICS` (plus its tests).

The in-distribution laws are learned empirically by calibration, so no statistic needs a closed
form.  Why each one exists:

- ``typicality``: -log q(x) / D, nats per dimension: the paper's typicality test (two-sided).
- ``complexity_corrected``: (-log2 q(x) - L(x)) / D with L(x) the image's length in bits under a
  generic lossless compressor (PNG).  Serra et al. (ICLR 2020): simple images such as MNIST
  digits get high likelihood from any model; subtracting their complexity cancels that.
  OoD inputs are those the model explains *no better* than PNG does (one-sided, upper).
- ``max_posterior``: -max_y log q(y|x): the classifier's own doubt (one-sided, upper).
- ``class_distance``: ||z - mu_yhat||^2 / D, the latent distance to the predicted class mean: a
  class-conditional typicality test.  Adversarial inputs are pushed to a class's posterior
  without becoming typical samples of that class (two-sided).
- ``logit_margin``: log q(top|x) - log q(second|x), the logit gap between the two most likely
  classes: over-confidence (one-sided, upper).  The GC's margins are bounded by the geometry of
  its class means; confident attacks go beyond them.
- ``complexity_excess``: -complexity_corrected, upper: the image is harder for PNG than its
  likelihood says.  On natural images the two code lengths move together; an adversarial
  perturbation adds incompressible pixel noise (+1,200-1,400 bits of PNG on Fashion-MNIST)
  while the attacker keeps the likelihood typical.  PNG length has no gradient to follow.
- ``background_ratio``: (log q(x) - log q_bg(x)) / D, the likelihood ratio against the artifact's
  background flow, a model of generic images (Schirrmeister et al., NeurIPS 2020; see
  trustgc/background.py).  Local pixel statistics shared by all natural images dominate the
  likelihood; the ratio cancels them, and photos, which the generic model explains better than
  the Fashion-MNIST model does, land in the lower tail (one-sided, lower).  Differentiable in x
  through both flows.  Only artifacts with a background have it (``requires_background``).
- ``neighbour_correlation``: Moran's I of the pixels, the lag-one spatial autocorrelation over
  horizontal and vertical neighbours.  Every image a camera, scanner or drawing program makes
  has correlated neighbours; i.i.d. noise has none (one-sided, lower).  Differentiable in x.

This module imports neither torch nor the model: the torch forms only call tensor methods (and
import torch when first called), so option parsers can list the statistics cheaply.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from trustgc.trust.pvalues import Side

if TYPE_CHECKING:
    from torch import Tensor

    from trustgc.inference import ModelOutputs
    from trustgc.scoring import LatentScores

__all__ = [
    "ATTACK_STATISTIC",
    "BACKGROUND_OOD_STATISTIC",
    "COMBINATIONS",
    "PNG_LENGTH_SURROGATE",
    "PAPER_STATISTIC",
    "PRODUCTION_OOD_STATISTIC",
    "STATISTICS",
    "Combination",
    "Statistic",
    "combination_components",
    "compute_statistics",
    "computable",
    "differentiable",
    "png_code_length_bits",
    "served_ood_statistic",
    "surrogate_of",
    "torch_form_of",
]

#: Surrogate names the attack code can provide for statistics that have no gradient.
PNG_LENGTH_SURROGATE = "png_length"


def png_encode(image: np.ndarray) -> bytes:
    """One uint8 image (C, H, W), C in {1, 3}, as PNG file bytes (grayscale or RGB), encoded as
    Pillow does by default: the encoding whose length the complexity statistics measure."""
    array = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_code_length_bits(pixels: np.ndarray) -> np.ndarray:
    """PNG size in bits of each uint8 image (N, C, H, W), C in {1, 3}: L(x) of Serra et al."""
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 (N, 1|3, H, W), got {pixels.dtype} {pixels.shape}")
    return np.array([8.0 * len(png_encode(image)) for image in pixels], dtype=np.float64)


def _moran_i(x):
    """Moran's I of each image (N, C, H, W) in float64, for numpy arrays and torch tensors alike
    (only methods both share), so the served value and the attacks' gradient are one formula."""
    centred = x - x.mean(axis=(2, 3), keepdims=True)
    products = (centred[..., :, :-1] * centred[..., :, 1:]).sum(axis=(2, 3)) + (
        centred[..., :-1, :] * centred[..., 1:, :]
    ).sum(axis=(2, 3))
    height, width = x.shape[2], x.shape[3]
    pairs = height * (width - 1) + (height - 1) * width
    numerator = products.sum(axis=1)
    denominator = pairs * (centred**2).mean(axis=(2, 3)).sum(axis=1)
    constant = denominator <= 0  # then every centred pixel, so the numerator, is 0: I = 1
    return numerator / (denominator + constant) + constant


def neighbour_correlation(pixels: np.ndarray) -> np.ndarray:
    """Lag-one spatial autocorrelation (Moran's I, rook neighbours) of each image (N, C, H, W).

    The sum over horizontal and vertical neighbour pairs (a, b) of (a - m)(b - m), divided by
    the number of pairs times v, with m and v the image's per-channel pixel mean and variance
    (numerators and denominators summed over channels).  Natural images have strongly
    correlated neighbours, i.i.d. noise none; an image constant in every channel gets 1.
    Invariant to each image's brightness and contrast, so uint8 and [0, 1] pixels agree.
    """
    return _moran_i(np.asarray(pixels, dtype=np.float64))


# ------------------------------------------------------------------------------ declarations

ArrayForm = Callable[["ModelOutputs", "np.ndarray | None"], np.ndarray]
TorchForm = Callable[["LatentScores"], "Tensor"]


@dataclass(frozen=True)
class Statistic:
    """One per-image trust statistic; large or small values are suspicious as ``side`` says.

    Exactly one of ``array`` (its own formula) and ``negation_of`` (the other tail of a
    registered statistic, computed from it so that e.g. PNG runs once).  At most one of
    ``torch_form`` (a differentiable form the attacks follow) and ``surrogate`` (the name of a
    smooth stand-in the attack code provides where no gradient exists); a negation inherits
    both from its source unless it declares its own.
    """

    name: str
    side: Side
    description: str
    array: ArrayForm | None = None
    torch_form: TorchForm | None = None
    surrogate: str | None = None
    negation_of: str | None = None
    requires_background: bool = False  # needs the artifact's background flow (its likelihood)

    def __post_init__(self) -> None:
        if (self.array is None) == (self.negation_of is None):
            raise ValueError(f"statistic {self.name!r}: give exactly one of array, negation_of")
        if self.torch_form is not None and self.surrogate is not None:
            raise ValueError(f"statistic {self.name!r}: a torch form or a surrogate, not both")
        if self.side not in ("upper", "lower", "two_sided"):
            raise ValueError(f"statistic {self.name!r}: unknown side {self.side!r}")

    def __call__(self, outputs: ModelOutputs, pixels: np.ndarray | None) -> np.ndarray:
        """The array form for a batch (a negation computes its source)."""
        if self.negation_of is not None:
            return -STATISTICS[self.negation_of](outputs, pixels)
        return self.array(outputs, pixels)


@dataclass(frozen=True)
class Combination:
    """A combined statistic T over component p-values; large T rejects (side ``upper``).

    ``combine`` maps the components' p-values (name -> (N,)) to T (N,).  T is calibrated
    empirically (see trustgc.trust.calibration), so it may combine correlated components.
    """

    name: str
    components: tuple[str, ...]
    combine: Callable[[dict[str, np.ndarray]], np.ndarray]
    description: str


# ------------------------------------------------------------------------------ array forms


def _typicality(outputs: ModelOutputs, pixels: np.ndarray | None) -> np.ndarray:
    return -outputs.log_likelihood / outputs.dim


def _complexity_corrected(outputs: ModelOutputs, pixels: np.ndarray | None) -> np.ndarray:
    model_bits = -outputs.log_likelihood / math.log(2.0) + 8.0 * outputs.dim  # 8-bit pixels
    return (model_bits - png_code_length_bits(pixels)) / outputs.dim


def _max_posterior(outputs: ModelOutputs, pixels: np.ndarray | None) -> np.ndarray:
    """-log q(top|x).  For a confident image q(top|x) = 1 - eps with eps ~ 1e-9: computed as
    -log1p(-sum of the other posteriors), every digit of eps survives, where 1 - eps would lose
    them; the ranking of confident images then rests on their posteriors, not on rounding."""
    log_posterior = outputs.log_posterior
    top = log_posterior.argmax(axis=1)
    rows = np.arange(top.size)
    is_top = np.arange(log_posterior.shape[1]) == top[:, None]
    others = np.exp(np.where(is_top, -np.inf, log_posterior)).sum(axis=1)
    direct = -log_posterior[rows, top]
    return np.where(others < 0.5, -np.log1p(-np.minimum(others, 0.5)), direct)


def _class_distance(outputs: ModelOutputs, pixels: np.ndarray | None) -> np.ndarray:
    predicted = outputs.log_posterior.argmax(axis=1)
    return outputs.squared_distances[np.arange(predicted.size), predicted] / outputs.dim


def _logit_margin(outputs: ModelOutputs, pixels: np.ndarray | None) -> np.ndarray:
    top_two = np.sort(outputs.log_posterior, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


def _neighbour_correlation(outputs: ModelOutputs, pixels: np.ndarray | None) -> np.ndarray:
    if pixels is None:
        raise ValueError("neighbour_correlation needs the uint8 pixels")
    return neighbour_correlation(pixels)


def _background_ratio(outputs: ModelOutputs, pixels: np.ndarray | None) -> np.ndarray:
    if outputs.background_log_likelihood is None:
        raise ValueError("background_ratio needs the artifact's background flow (background/)")
    return (outputs.log_likelihood - outputs.background_log_likelihood) / outputs.dim


# ------------------------------------------------------------------------------ torch forms
# The same formulas on LatentScores tensors, differentiable in the latents (argmax positions
# are constants of the gradient, as in the served statistic).  tests/core/test_statistics.py
# checks each against its array form on real model outputs.


def _typicality_torch(scores: LatentScores) -> Tensor:
    return -scores.log_likelihood / scores.dim


def _max_posterior_torch(scores: LatentScores) -> Tensor:
    import torch

    log_posterior = scores.log_posterior
    top = log_posterior.argmax(dim=1, keepdim=True)
    others = log_posterior.scatter(1, top, -math.inf).exp().sum(dim=1)
    direct = -log_posterior.gather(1, top)[:, 0]
    return torch.where(others < 0.5, -torch.log1p(-others.clamp(max=0.5)), direct)


def _class_distance_torch(scores: LatentScores) -> Tensor:
    predicted = scores.log_posterior.argmax(dim=1, keepdim=True)
    return scores.squared_distances.gather(1, predicted)[:, 0] / scores.dim


def _background_ratio_torch(scores: LatentScores) -> Tensor:
    if scores.background_log_likelihood is None:
        raise ValueError(
            "background_ratio needs the background flow's log-likelihood: score with "
            "trustgc.inference.latent_scores(model, x, background)"
        )
    return (scores.log_likelihood - scores.background_log_likelihood) / scores.dim


def _neighbour_correlation_torch(scores: LatentScores) -> Tensor:
    if scores.inputs is None:
        raise ValueError(
            "neighbour_correlation needs the images the scores are of: score with "
            "model.score(x) or trustgc.inference.latent_scores(model, x)"
        )
    return _moran_i(scores.inputs.double())


def _logit_margin_torch(scores: LatentScores) -> Tensor:
    top_two = scores.log_posterior.topk(2, dim=1).values
    return top_two[:, 0] - top_two[:, 1]


# ------------------------------------------------------------------------------ the registry

STATISTICS: dict[str, Statistic] = {
    statistic.name: statistic
    for statistic in (
        Statistic(
            "typicality",
            "two_sided",
            "the paper's typicality score -log q(x)/D",
            array=_typicality,
            torch_form=_typicality_torch,
        ),
        Statistic(
            "complexity_corrected",
            "upper",
            "model code length minus PNG code length per dimension (Serra et al.)",
            array=_complexity_corrected,
            surrogate=PNG_LENGTH_SURROGATE,
        ),
        Statistic(
            "max_posterior",
            "upper",
            "the classifier's doubt -max_y log q(y|x)",
            array=_max_posterior,
            torch_form=_max_posterior_torch,
        ),
        Statistic(
            "class_distance",
            "two_sided",
            "the latent distance to the predicted class mean ||z - mu_pred||^2/D (pred = the "
            "argmax; the gradient flows through z)",
            array=_class_distance,
            torch_form=_class_distance_torch,
        ),
        Statistic(
            "logit_margin",
            "upper",
            "the gap between the two largest logits (over-confidence)",
            array=_logit_margin,
            torch_form=_logit_margin_torch,
        ),
        Statistic(
            "complexity_excess",
            "upper",
            "PNG code length beyond what the likelihood explains (-complexity_corrected)",
            negation_of="complexity_corrected",
        ),
        Statistic(
            "background_ratio",
            "lower",
            "likelihood ratio against the background flow of generic images "
            "(log q(x) - log q_bg(x))/D",
            array=_background_ratio,
            torch_form=_background_ratio_torch,
            requires_background=True,
        ),
        Statistic(
            "neighbour_correlation",
            "lower",
            "lag-one spatial autocorrelation of the pixels (Moran's I, rook neighbours)",
            array=_neighbour_correlation,
            torch_form=_neighbour_correlation_torch,
        ),
    )
}


def _production_ood(p: dict[str, np.ndarray]) -> np.ndarray:
    """T = max( -log p_complexity - log p_max_posterior,  -log p_typicality ).

    A min-p (Tippett) test over two tests: Fisher's product of the complexity-corrected
    likelihood and the classifier's doubt (catches simple images such as MNIST digits, which get
    *higher* likelihood, and ambiguous ones), and the paper's two-sided typicality test (catches
    noise, which no model or compressor explains).  A Fisher sum over all three would let a
    component with p near 1 (noise looks "complex enough") dilute an extreme typicality p.
    """
    fisher = -np.log(p["complexity_corrected"]) - np.log(p["max_posterior"])
    return np.maximum(fisher, -np.log(p["typicality"]))


def _tippett(p: dict[str, np.ndarray]) -> np.ndarray:
    """T = max over the components of -log p: a min-p (Tippett) test.

    For the attack statistic: class-conditional typicality (an input pushed into a class
    without becoming one of its typical samples); over-confidence (the GC's logit margin is
    bounded by how far apart the class means lie: clean images stay below about 7, a confident
    attack lands beyond anything clean, whatever else it keeps typical); and excess complexity
    (the perturbation's pixel noise makes the image much harder for PNG than its likelihood
    says).  Each catches attacks the others miss (docs/attacks.md).
    """
    return np.maximum.reduce([-np.log(values) for values in p.values()])


def _production_ood_with_background(p: dict[str, np.ndarray]) -> np.ndarray:
    """T = max( -log p_complexity - log p_max_posterior,  -log p_typicality,
    -log p_background_ratio,  -log p_neighbour_correlation ): the production statistic plus
    two min-p terms.  Photos (complex *and* unlikely, so their complexity-corrected likelihood
    looks normal) are explained better by the background flow and fall in the ratio's lower
    tail.  Images without spatial structure (i.i.d. noise: a broken sensor, random bytes) have
    uncorrelated neighbouring pixels, which no garment has; the flows and PNG see that only
    mixed with everything else, where the most textured or doubtful garments cap it.  The terms
    that catch MNIST digits and noise are kept as they were (docs/method.md: both added terms
    were chosen by pre-registered rules on held-out selection sets).
    """
    return np.maximum.reduce(
        [
            _production_ood(p),
            -np.log(p["background_ratio"]),
            -np.log(p["neighbour_correlation"]),
        ]
    )


#: Served roles: which statistic is the paper's test, which combinations are served for OoD
#: rejection and for the attack flag.  An artifact with a background flow serves
#: BACKGROUND_OOD_STATISTIC for OoD, one without serves PRODUCTION_OOD_STATISTIC.
PAPER_STATISTIC = "typicality"
PRODUCTION_OOD_STATISTIC = "combined_ood"
BACKGROUND_OOD_STATISTIC = "combined_ood_background"
ATTACK_STATISTIC = "combined_attack"

COMBINATIONS: dict[str, Combination] = {
    combination.name: combination
    for combination in (
        Combination(
            PRODUCTION_OOD_STATISTIC,
            ("complexity_corrected", "typicality", "max_posterior"),
            _production_ood,
            "max(Fisher(complexity_corrected, max_posterior), typicality)",
        ),
        Combination(
            BACKGROUND_OOD_STATISTIC,
            (
                "complexity_corrected",
                "typicality",
                "max_posterior",
                "background_ratio",
                "neighbour_correlation",
            ),
            _production_ood_with_background,
            "max(Fisher(complexity_corrected, max_posterior), typicality, background_ratio, "
            "neighbour_correlation)",
        ),
        Combination(
            ATTACK_STATISTIC,
            ("class_distance", "logit_margin", "complexity_excess"),
            _tippett,
            "min-p over class_distance, logit_margin and complexity_excess",
        ),
    )
}


def _check_registry() -> None:
    """Every reference inside the registry resolves (run at import)."""
    for statistic in STATISTICS.values():
        if statistic.negation_of is not None:
            source = STATISTICS.get(statistic.negation_of)
            if source is None or source.negation_of is not None:
                raise ValueError(f"{statistic.name}: {statistic.negation_of!r} is no source")
    for combination in COMBINATIONS.values():
        unknown = set(combination.components) - set(STATISTICS)
        if unknown:
            raise ValueError(f"{combination.name}: unknown components {sorted(unknown)}")
    for role in (PRODUCTION_OOD_STATISTIC, BACKGROUND_OOD_STATISTIC, ATTACK_STATISTIC):
        if role not in COMBINATIONS:
            raise ValueError(f"served combination {role!r} is not registered")
    if PAPER_STATISTIC not in STATISTICS:
        raise ValueError(f"paper statistic {PAPER_STATISTIC!r} is not registered")


_check_registry()


# ------------------------------------------------------------------------------ derived views


def computable(has_background: bool) -> tuple[str, ...]:
    """The registered statistics a model can compute, with or without a background flow."""
    return tuple(
        name
        for name, statistic in STATISTICS.items()
        if has_background or not statistic.requires_background
    )


def served_ood_statistic(has_background: bool) -> str:
    """The OoD combination served for a model with or without a background flow."""
    return BACKGROUND_OOD_STATISTIC if has_background else PRODUCTION_OOD_STATISTIC


def combination_components() -> tuple[str, ...]:
    """Every statistic some combination uses (sorted)."""
    return tuple(sorted({c for comb in COMBINATIONS.values() for c in comb.components}))


def torch_form_of(name: str) -> TorchForm | None:
    """The differentiable form of a statistic (a negation's: its source's, negated), or None."""
    statistic = STATISTICS[name]
    if statistic.torch_form is not None or statistic.negation_of is None:
        return statistic.torch_form
    source = STATISTICS[statistic.negation_of].torch_form
    return None if source is None else (lambda scores: -source(scores))


def surrogate_of(name: str) -> str | None:
    """The surrogate a statistic without a torch form names (a negation inherits its source's)."""
    statistic = STATISTICS[name]
    if statistic.surrogate is not None or statistic.negation_of is None:
        return statistic.surrogate
    return STATISTICS[statistic.negation_of].surrogate


def differentiable(names: tuple[str, ...] | list[str] | None = None) -> tuple[str, ...]:
    """The statistics among ``names`` (default: all) that have a torch form, in order."""
    chosen = tuple(STATISTICS) if names is None else tuple(names)
    return tuple(name for name in chosen if torch_form_of(name) is not None)


def compute_statistics(
    outputs: ModelOutputs, pixels: np.ndarray | None, names: list[str] | tuple[str, ...]
) -> dict[str, np.ndarray]:
    """The named statistics for a batch; ``pixels`` are the uint8 inputs (N, C, H, W).

    A negation is computed from its source, so the PNG encoding behind both complexity tests
    runs once.
    """
    if not outputs.is_generative:
        raise ValueError("trust statistics need a generative model (likelihoods)")
    unknown = set(names) - set(STATISTICS)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; known: {sorted(STATISTICS)}")
    sources = {STATISTICS[name].negation_of or name for name in names}
    computed = {name: STATISTICS[name](outputs, pixels) for name in sorted(sources)}
    out = {}
    for name in names:
        source = STATISTICS[name].negation_of
        out[name] = -computed[source] if source else computed[name]
    return out
