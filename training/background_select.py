"""Choosing the OoD statistic on a selection set that no evaluation touches.

Selection data (see training/background.py for the discipline):

- in-distribution: the Fashion-MNIST *calibration* split the artifact recorded (never trained
  on), divided as ``trustgc calibrate`` divides it: part A fits the component references, part
  B the combined statistic's reference and is the in-distribution side of every AUC here;
- out-of-distribution: the CIFAR-10 *train* images held out from the background model's
  training (served decoding), synthetic smooth noise from a seed the background training
  never used, and i.i.d. pixel noise from three generators that neither the background
  training nor the OoD evaluation uses (:func:`iid_noise`).

``--uniform-weight w`` scores every candidate with the background density replaced by the
mixture (1 - w) q_bg(x) + w u(x), u the uniform density on the pixel cube (log u = 0): the
maximum-entropy image model, which explains i.i.d. noise better than any flow trained on
photos does.

Each candidate is a combined statistic over component p-values (the served construction), so
the numbers compare what would actually ship: ``served_now_plus_ratio_plus_neighbours_min_p``
is the served gate, ``served_now_plus_ratio_min_p`` the one served before its
neighbour-correlation term, ``copula_density`` a joint density over the latter's components
(each pre-registered in docs/method.md).  Reported per candidate and OoD selection set:
ROC-AUC against part B and the share rejected at alpha with T's reference fitted on part B.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm

from training.background import selection_split, smooth_noise
from training.calibrate import calibration_split
from training.data_root import data_root
from training.metrics import roc_auc
from training.served_sets import served_cifar10
from trustgc.artifact import load_model
from trustgc.inference import model_outputs
from trustgc.preprocess import pixels_to_tensor
from trustgc.trust.pvalues import EmpiricalReference
from trustgc.trust.statistics import (
    BACKGROUND_OOD_STATISTIC,
    COMBINATIONS,
    PRODUCTION_OOD_STATISTIC,
    STATISTICS,
    compute_statistics,
)

__all__ = [
    "CANDIDATES",
    "FITTED_CANDIDATES",
    "copula_density_candidate",
    "evaluate_candidates",
    "iid_noise",
    "mix_with_uniform",
    "selection_statistics",
]

RATIO = "background_ratio"  # (log q_in(x) - log q_bg(x)) / D, lower tail suspicious
NEIGHBOURS = "neighbour_correlation"  # Moran's I of the pixels, lower tail suspicious
SIDES = {name: s.side for name, s in STATISTICS.items()}
#: The OoD gate served before the neighbour-correlation term (docs/method.md), kept to compare.
BEFORE_NEIGHBOURS = ("complexity_corrected", "typicality", "max_posterior", RATIO)


def _fisher(p: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    return -np.sum([np.log(p[name]) for name in names], axis=0)


def _tippett(*terms: np.ndarray) -> np.ndarray:
    return np.maximum.reduce(list(terms))


#: name -> (components, T from their part-A p-values); large T = OoD.  The served combinations
#: come from the registry (one formula each); the others are the alternatives weighed against them.
CANDIDATES: dict[str, tuple[tuple[str, ...], Callable[[dict[str, np.ndarray]], np.ndarray]]] = {
    "served_now": (
        COMBINATIONS[PRODUCTION_OOD_STATISTIC].components,
        COMBINATIONS[PRODUCTION_OOD_STATISTIC].combine,
    ),
    "ratio_alone": ((RATIO,), lambda p: -np.log(p[RATIO])),
    "ratio_and_typicality": (
        (RATIO, "typicality"),
        lambda p: _tippett(-np.log(p[RATIO]), -np.log(p["typicality"])),
    ),
    "served_now_plus_ratio_min_p": (
        BEFORE_NEIGHBOURS,
        lambda p: _tippett(COMBINATIONS[PRODUCTION_OOD_STATISTIC].combine(p), -np.log(p[RATIO])),
    ),
    "served_now_plus_ratio_plus_neighbours_min_p": (
        COMBINATIONS[BACKGROUND_OOD_STATISTIC].components,
        COMBINATIONS[BACKGROUND_OOD_STATISTIC].combine,
    ),
    "served_now_plus_ratio_in_fisher": (
        ("complexity_corrected", "max_posterior", "typicality", RATIO),
        lambda p: _tippett(
            _fisher(p, ("complexity_corrected", "max_posterior", RATIO)),
            -np.log(p["typicality"]),
        ),
    ),
}


def normal_scores(reference: EmpiricalReference, scores: np.ndarray) -> np.ndarray:
    """Each score as a standard normal quantile of the reference's law (tails extrapolated):
    positive in the upper half, ``norm.isf`` so that p-values far below 1e-16 keep their z."""
    upper = np.maximum(reference.p_upper(scores), 1e-300)
    lower = np.maximum(reference.p_lower(scores), 1e-300)
    return np.where(upper <= lower, norm.isf(upper), -norm.isf(lower))


def copula_density_candidate(
    part_a: dict[str, np.ndarray], components: tuple[str, ...]
) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """T = z^T R^-1 z over the components' normal scores, R their correlation on part A.

    The Gaussian-copula form of Density of States Estimation (Morningstar et al., AISTATS 2021):
    a density over the vector of summary statistics fitted on in-distribution data only, so that
    a combination rare *jointly* ranks above one rare in a single, often-extreme component.
    """
    references = {
        name: EmpiricalReference(np.sort(part_a[name]), "upper", True) for name in components
    }

    def z_of(values: dict[str, np.ndarray]) -> np.ndarray:
        return np.stack([normal_scores(references[c], values[c]) for c in components], axis=1)

    precision = np.linalg.inv(np.corrcoef(z_of(part_a), rowvar=False))

    def t_of(values: dict[str, np.ndarray]) -> np.ndarray:
        z = z_of(values)
        return np.einsum("ni,ij,nj->n", z, precision, z)

    return t_of


#: name -> (fit on part A's raw statistics -> T of raw statistics): candidates with fitted
#: parameters beyond the component references (pre-registered in docs/method.md).
FITTED_CANDIDATES: dict[
    str, Callable[[dict[str, np.ndarray]], Callable[[dict[str, np.ndarray]], np.ndarray]]
] = {
    "copula_density": lambda part_a: copula_density_candidate(part_a, BEFORE_NEIGHBOURS),
}


def iid_noise(count: int, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """I.i.d. pixel noise (N, C, H, W) uint8 from generators the evaluation does not use.

    Each image draws one of three kinds: salt and pepper (a dark and a bright level, a random
    share of bright pixels), Laplace noise around a random mean, and noise over 3 to 8 random
    grey levels.  The OoD evaluation's noise (uniform over 0..255, Gaussian around 128 with
    sigma 50) is neither; the background training's smooth noise is spatially correlated.
    """
    out = np.empty((count, *shape), np.uint8)
    for index in range(count):
        kind = int(rng.integers(3))
        if kind == 0:
            low, high, share = rng.uniform(0, 80), rng.uniform(175, 255), rng.uniform(0.1, 0.9)
            values = np.where(rng.random(shape) < share, high, low)
        elif kind == 1:
            values = rng.laplace(rng.uniform(40, 215), rng.uniform(10, 60), shape)
        else:
            levels = rng.uniform(0, 255, int(rng.integers(3, 9)))
            values = levels[rng.integers(levels.size, size=shape)]
        out[index] = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return out


def mix_with_uniform(log_density: np.ndarray, weight: float) -> np.ndarray:
    """log((1 - weight) q(x) + weight * 1) for log q(x) on [0, 1]^D; weight 0 leaves it."""
    if weight == 0.0:
        return log_density
    return np.logaddexp(log_density + np.log1p(-weight), np.log(weight))


def _statistics(
    model, background, pixels: np.ndarray, uniform_weight: float = 0.0
) -> dict[str, np.ndarray]:
    """Every registered statistic plus the background ratio, for uint8 (N, C, H, W)."""
    outputs = model_outputs(model, torch.from_numpy(pixels), 500, background=background)
    outputs = replace(
        outputs,
        background_log_likelihood=mix_with_uniform(
            outputs.background_log_likelihood, uniform_weight
        ),
    )
    statistics = compute_statistics(outputs, pixels, sorted(STATISTICS))
    statistics["background_nll"] = -outputs.background_log_likelihood / outputs.dim
    return statistics


def selection_statistics(
    model_dir: Path,
    background_dir: Path,
    data_root: Path,
    photos: int = 2000,
    noise: int = 1000,
    seed: int = 0,
    uniform_weight: float = 0.0,
) -> dict[str, dict[str, np.ndarray]]:
    """Statistics of the selection sets: calibration parts A and B, held-out photos, noise."""
    model, manifest = load_model(model_dir)
    background, background_manifest = load_model(background_dir)
    spec = manifest.config.input
    shape = (spec.channels, spec.height, spec.width)
    calibration = calibration_split(manifest.training, None)
    order = np.random.default_rng(0).permutation(len(calibration))  # trustgc calibrate's split
    half = int(round(0.2 * len(order)))
    pixels = pixels_to_tensor(calibration.images).numpy()
    recipe = background_manifest.training["background"]
    cifar_train = served_cifar10(data_root, "train", shape)
    _, held_out = selection_split(len(cifar_train), recipe["selection_size"], recipe["seed"])
    rng = np.random.default_rng([seed, 7919])  # a stream the background training never drew
    chosen = np.sort(rng.permutation(held_out)[:photos])
    sets = {
        "calibration_a": pixels[order[:half]],
        "calibration_b": pixels[order[half:]],
        "cifar10_train_held_out": cifar_train[chosen],
        "smooth_noise": smooth_noise(noise, shape, rng),
        "iid_noise": iid_noise(noise, shape, rng),
    }
    return {
        name: _statistics(model, background, images, uniform_weight)
        for name, images in sets.items()
    }


def evaluate_candidates(stats: dict[str, dict[str, np.ndarray]], alpha: float = 0.01) -> dict:
    """Per candidate and OoD selection set: AUC (%) against part B, share rejected at alpha."""
    a, b = stats["calibration_a"], stats["calibration_b"]
    references = {name: EmpiricalReference(np.sort(a[name]), SIDES[name], True) for name in SIDES}
    out_sets = [name for name in stats if not name.startswith("calibration_")]
    results = {}

    fitted = {name: fit(a) for name, fit in FITTED_CANDIDATES.items()}

    def t_of(candidate: str, values: dict[str, np.ndarray]) -> np.ndarray:
        if candidate in fitted:
            return fitted[candidate](values)
        components, combine = CANDIDATES[candidate]
        return combine({c: references[c].p_value(values[c]) for c in components})

    for candidate in [*CANDIDATES, *FITTED_CANDIDATES]:
        t_b = t_of(candidate, b)
        reference_b = EmpiricalReference(np.sort(t_b), "upper")
        row = {}
        for name in out_sets:
            t_out = t_of(candidate, stats[name])
            row[name] = {
                "auc_percent": 100.0 * roc_auc(t_b, t_out),
                "rejected": float(np.mean(reference_b.p_value(t_out) < alpha)),
            }
        results[candidate] = row
    components = {}
    for name in (RATIO, "background_nll", "typicality", "complexity_corrected", NEIGHBOURS):
        sign = -1.0 if SIDES.get(name) == "lower" else 1.0  # background_nll: upper
        components[name] = {
            out: 100.0 * roc_auc(sign * b[name], sign * stats[out][name]) for out in out_sets
        }
    fit = {  # the background's own density fit on data it never trained on (lower is better)
        out: float(np.mean(stats[out]["background_nll"])) for out in out_sets
    }
    return {
        "alpha": alpha,
        "candidates": results,
        "raw_component_auc_percent": components,
        "background_nll_per_dim": fit,
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("model_store/fashion_mnist"))
    parser.add_argument("--background", type=Path, required=True)
    parser.add_argument(
        "--data-root", type=Path, default=data_root(), help="default: $TRUSTGC_DATA"
    )
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument("--seed", type=int, default=0, help="draws the photos and the noise")
    parser.add_argument(
        "--uniform-weight",
        type=float,
        default=0.0,
        help="score with the background (1 - w) q_bg + w * uniform (default 0: q_bg alone)",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.uniform_weight < 1.0:
        parser.error("--uniform-weight must be in [0, 1)")
    torch.set_num_threads(1)
    stats = selection_statistics(
        args.model,
        args.background,
        args.data_root,
        seed=args.seed,
        uniform_weight=args.uniform_weight,
    )
    result = {"uniform_weight": args.uniform_weight, "seed": args.seed}
    result.update(evaluate_candidates(stats))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
