"""White-box adaptive attacks on everything the service decides with, judged by the service.

The attacker knows the model, every served statistic and its calibration.  Its objective, per
image, over the perturbation delta (x_adv = clip(x + delta, 0, 1), forwarded as the nearest
8-bit image with a straight-through gradient: BPDA for the service's uint8 input):

    ||delta||_2^2 + l1 * ||delta||_1 + c * max(max_{j != t} l_j - l_t, -kappa) + d * L_detect

- ``L_detect`` = sum over the served statistics s of ((s - median_s) / std_s)^2, median and std
  of the clean calibration split, one-sided (only the suspicious side counts) where the served
  test is one-sided.  Every statistic enters through its torch form from the registry
  (trustgc.trust.statistics, the background ratio included when the artifact has one); those
  that name the ``png_length`` surrogate through the re-anchored surrogate of
  :mod:`training.surrogates` (the ``surrogate=False`` attacker leaves them out, as a
  gradient-only attacker must).
- ``kappa`` is the clean logit margin's median: the adversarial is as confident as a typical
  clean image, so neither the margin nor the posterior test sees anything unusual.
- c and d adapt per image: every ``check_every`` steps the current 8-bit iterate goes through
  the *served* decision (:meth:`trustgc.trust.Predictor.score`).  Still the true label: c x 2;
  a wrong label that is rejected or flagged: d x 2; accepted with a wrong label: c / 1.5 (the
  attack then trades success for a smaller L2).  The smallest-L2 iterate that the service
  accepted with a wrong label is the result: success is never decided by a proxy.

Modes (:class:`AttackMode`): ``cw`` (Adam on the objective above), ``pgd`` (normalised gradient
steps projected onto an L2 ball whose radius grows from ``radius_start`` to ``radius_end``, so
the first success comes near the smallest radius that works), ``l1`` > 0 for sparse
perturbations, ``grid`` for low-frequency ones (delta is a g x g map upsampled bilinearly), and
targets ``runner_up`` (the clean image's second class) or ``random``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from training.attacks import bin_centres, quantize_unit, random_targets, target_margin
from training.surrogates import AnchoredPngLength, PngSurrogate
from trustgc.inference import latent_scores
from trustgc.preprocess import pixels_to_unit
from trustgc.scoring import LatentScores
from trustgc.trust import Predictor
from trustgc.trust.calibration import Calibration
from trustgc.trust.statistics import (
    PNG_LENGTH_SURROGATE,
    STATISTICS,
    surrogate_of,
    torch_form_of,
)
from trustgc.trust.table import Decision

__all__ = [
    "AttackMode",
    "ModeResult",
    "ServedPenalty",
    "run_mode",
    "served_outcome",
    "torch_statistics",
]

_LN2 = math.log(2.0)


class AttackMode(BaseModel):
    """One attack of the suite (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["cw", "pgd"] = "cw"
    target: Literal["runner_up", "random"] = "runner_up"
    l1: float = Field(default=0.0, ge=0)  # weight of ||delta||_1 (sparse mode)
    grid: int | None = Field(default=None, ge=2)  # low-frequency: delta on a grid x grid map
    surrogate: bool = True  # attack the PNG statistics through the surrogate
    steps: int = Field(default=300, ge=1)
    lr: float = Field(default=0.01, gt=0)  # Adam (cw); pgd step = radius / 8
    c0: float = Field(default=1.0, gt=0)
    d: float = Field(default=1.0, ge=0)  # initial weight of L_detect (0: no detector penalty)
    kappa: float | None = None  # None: the clean logit margin's median from the calibration
    check_every: int = Field(default=10, ge=1)  # served check, c update and PNG re-anchoring
    radius_start: float = Field(default=0.1, gt=0)  # pgd
    radius_end: float = Field(default=3.0, gt=0)  # pgd


@dataclass(frozen=True)
class ModeResult:
    """Per image: the smallest L2 at which the service accepted a wrong label, and the image."""

    l2: np.ndarray  # (B,) in [0, 1] pixel units; inf where the attack never succeeded
    adversarial: np.ndarray  # (B, C, H, W) uint8; the clean image where it failed
    decision_counts: dict[str, int]  # served decisions of the final iterates
    steps_run: int


def torch_statistics(
    scores: LatentScores, png_bits: Tensor | None, names: tuple[str, ...]
) -> dict[str, Tensor]:
    """Differentiable forms of the served statistics ``names``: the registry's torch form
    (trustgc.trust.statistics), or for the PNG-length ones the surrogate's length ``png_bits``
    (left out when None: a gradient-only attacker).  A statistic with neither is an error: the
    suite must attack every served component."""
    out: dict[str, Tensor] = {}
    for name in names:
        form = torch_form_of(name)
        if form is not None:
            out[name] = form(scores)
        elif surrogate_of(name) == PNG_LENGTH_SURROGATE:
            if png_bits is None:
                continue
            model_bits = -scores.log_likelihood / _LN2 + 8.0 * scores.dim
            corrected = (model_bits - png_bits.to(model_bits.dtype)) / scores.dim
            out[name] = corrected if STATISTICS[name].negation_of is None else -corrected
        else:
            raise ValueError(f"no torch form or known surrogate for served statistic {name!r}")
    return out


class ServedPenalty:
    """L_detect: squared z-scores of the served statistics about their clean medians, counted
    only on the side the served test rejects (``upper``: above, ``lower``: below)."""

    def __init__(self, calibration: Calibration, surrogate: bool) -> None:
        names = tuple(sorted(calibration.components))
        if not surrogate:
            names = tuple(n for n in names if surrogate_of(n) != PNG_LENGTH_SURROGATE)
        self.names = names
        summaries = {name: calibration.components[name].summary for name in names}
        self.centre = {name: s["q0.5"] for name, s in summaries.items()}
        self.scale = {name: s["std"] for name, s in summaries.items()}
        self.side = {name: calibration.components[name].side for name in names}

    def __call__(self, scores: LatentScores, png_bits: Tensor | None) -> Tensor:
        total = torch.zeros_like(scores.log_likelihood)
        for name, value in torch_statistics(scores, png_bits, self.names).items():
            z = (value - self.centre[name]) / self.scale[name]
            if self.side[name] == "upper":
                z = z.clamp(min=0.0)
            elif self.side[name] == "lower":
                z = z.clamp(max=0.0)
            total = total + z**2
        return total


def served_outcome(
    predictor: Predictor, pixels: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(wrong, decisions) of the uint8 images: the served label differs from ``labels``, and
    the served decision.  Success is ``wrong & (decisions == accepted)``."""
    table = predictor.score(pixels)
    return table.predicted_index != labels, table.decisions


def choose_targets(
    predictor: Predictor, pixels: np.ndarray, labels: np.ndarray, kind: str, seed: int
) -> np.ndarray:
    """The class to push each image to: the clean runner-up, or a seeded random other class."""
    if kind == "random":
        return random_targets(labels, predictor.manifest.config.num_classes, seed)
    table = predictor.score(pixels)
    ranked = np.argsort(-table.log_posterior, axis=1)
    return np.where(ranked[:, 0] == labels, ranked[:, 1], ranked[:, 0])


def _delta(parameter: Tensor, grid: int | None, shape: torch.Size) -> Tensor:
    if grid is None:
        return parameter
    return F.interpolate(parameter, size=shape[-2:], mode="bilinear", align_corners=False)


def _project_l2(parameter: Tensor, grid: int | None, shape: torch.Size, radius: float) -> Tensor:
    """Scale each row so that its upsampled perturbation has L2 norm <= radius (the upsampling
    is linear, so scaling the parameter scales the perturbation)."""
    norms = _delta(parameter, grid, shape).flatten(1).norm(dim=1).clamp(min=1e-12)
    factor = torch.clamp(radius / norms, max=1.0)
    return parameter * factor.view(-1, 1, 1, 1)


def _on(device: torch.device, values: np.ndarray) -> Tensor:
    return torch.from_numpy(values).to(device=device, dtype=torch.float64)


def run_mode(
    predictor: Predictor,
    pixels: np.ndarray,
    labels: np.ndarray,
    mode: AttackMode,
    surrogate: PngSurrogate | None,
    seed: int = 0,
) -> ModeResult:
    """Attack uint8 images (B, C, H, W) with true ``labels`` in one mode (module docstring)."""
    if predictor.backend != "torch":
        raise ValueError("the attack needs the torch backend (gradients of f), not onnxruntime")
    model = predictor.model
    generative = predictor.is_generative
    device = predictor.device
    clean = pixels_to_unit(torch.from_numpy(pixels)).to(device)
    n = clean.shape[0]
    targets = torch.from_numpy(choose_targets(predictor, pixels, labels, mode.target, seed))
    targets = targets.to(device)
    if generative:
        calibration = predictor.calibration
        kappa = mode.kappa
        if kappa is None:
            kappa = calibration.components["logit_margin"].summary["q0.5"]
        use_png = mode.surrogate and surrogate is not None
        penalty = ServedPenalty(calibration, surrogate=use_png)
        anchored = AnchoredPngLength(surrogate, n) if use_png else None
    else:
        kappa, penalty, anchored = (mode.kappa or 0.0), None, None
    shape = clean.shape
    size = (n, shape[1], mode.grid, mode.grid) if mode.grid else tuple(shape)
    parameter = torch.zeros(size, requires_grad=True, device=device)
    optimiser = torch.optim.Adam([parameter], lr=mode.lr) if mode.kind == "cw" else None
    c = torch.full((n,), float(mode.c0), device=device)
    d = torch.full((n,), float(mode.d), device=device)
    best_l2 = np.full(n, np.inf)
    best = pixels.copy()
    decisions = np.empty(n, dtype=object)
    labels = np.asarray(labels)
    for step in range(mode.steps + 1):
        delta = _delta(parameter, mode.grid, shape)
        continuous = (clean + delta).clamp(0.0, 1.0)
        x_adv = continuous + (bin_centres(continuous) - continuous).detach()
        if step % mode.check_every == 0 or step == mode.steps:
            adversarial = quantize_unit(x_adv.detach()).cpu().numpy()
            wrong, decisions = served_outcome(predictor, adversarial, labels)
            success = wrong & (decisions == Decision.ACCEPTED)
            l2 = np.sqrt(((adversarial.astype(np.float64) - pixels) ** 2).reshape(n, -1).sum(1))
            l2 = l2 / 256.0
            better = success & (l2 < best_l2)
            best_l2[better] = l2[better]
            best[better] = adversarial[better]
            if step > 0:
                c = c * _on(device, np.where(success, 1 / 1.5, np.where(wrong, 1.0, 2.0)))
                d = d * _on(device, np.where(wrong & ~success, 2.0, 1.0))
            if anchored is not None:
                anchored.anchor(x_adv.detach())
        if step == mode.steps:
            break
        if generative:
            scores = latent_scores(model, x_adv, predictor.background)
            logits = scores.logits
            png_bits = anchored(x_adv) if anchored is not None else None
            detect = penalty(scores, png_bits)
        else:
            logits = model(x_adv)
            detect = torch.zeros(n, device=device)
        class_term = torch.clamp(-target_margin(logits, targets), min=-kappa)
        objective = c * class_term + d * detect
        perturbation = x_adv - clean
        if mode.kind == "cw":
            loss = perturbation.pow(2).flatten(1).sum(1) + objective
            if mode.l1 > 0:
                loss = loss + mode.l1 * perturbation.abs().flatten(1).sum(1)
            optimiser.zero_grad()
            loss.sum().backward()
            optimiser.step()
        else:
            (grad,) = torch.autograd.grad(objective.sum(), parameter)
            radius = mode.radius_start * (mode.radius_end / mode.radius_start) ** (
                step / max(1, mode.steps - 1)
            )
            scale = grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
            with torch.no_grad():
                parameter -= radius / 8.0 * grad / scale
                parameter.copy_(_project_l2(parameter, mode.grid, shape, radius))
    counts = {str(d): int(np.sum(decisions == d)) for d in Decision}
    return ModeResult(l2=best_l2, adversarial=best, decision_counts=counts, steps_run=mode.steps)
