"""Carlini-Wagner targeted L2 attack, batched, for the generative classifier and the baseline.

For clean images x in [0, 1] and target classes t != y the attack minimises, per image,

    ||x_adv - x||_2^2 + c * max(max_{j != t} l_j(x_adv) - l_t(x_adv), -kappa) + d * L_detect(x_adv)

over x_adv = (tanh(w) + 1) / 2 (the box reparameterisation: every iterate lies in [0, 1]), with
Adam (lr 0.01) on w for a fixed number of steps per round and a per-image binary search over c
(Carlini and Wagner, S&P 2017):

- round 1 uses c = c0 for every image; after each round an image that succeeded at c sets the
  upper bound hi = c, one that failed the lower bound lo = c; the next c is (lo + hi) / 2 once an
  upper bound exists, else 10 c.  w restarts from the clean image each round, Adam from zero.
- "success" for the search is l_t - max_{j != t} l_j >= kappa (the confidence CW asks for); the
  smallest-L2 successful iterate over all rounds and steps is returned.
- ``kappa = inf`` has no cap on the margin term: the attack maximises the target margin, traded
  off against the L2 term at the given c, and is *run to a fixed step budget*: the result is the
  last iterate (not the smallest successful one, which would just be a kappa = 0 attack).  There
  is nothing to bisect; images that have not reached the target after a round are rerun with
  10 c, the others keep their final iterate.
- ``quantize=True`` (used by the evaluation): every forward pass sees the iterate rounded to
  the nearest 8-bit image (bin centre (k + 1/2) / 256), with the straight-through gradient
  (BPDA).  Margin, L2, L_detect and success then all refer to an image the service could
  actually receive; without it, a kappa = 0.01 adversarial rarely survives rounding to uint8.
- Early abort (finite kappa only): every steps / 10 steps an image whose loss improved by less
  than 1e-4 (relative) is dropped from the batch for the rest of the round, as in the CW code.
  Images are independent (the models run in eval mode), so this only saves time.

The model enters through ``logits_fn(x) -> (B, K)`` on images in [0, 1].  For the
detection-aware variant (``d > 0``) it returns ``(logits, L_detect)`` from the same forward pass,
see :func:`gc_attack_fn` and :class:`DetectionPenalty`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from training.attack_options import DETECT_STATISTICS
from trustgc.preprocess import pixels_to_unit
from trustgc.scoring import LatentScores
from trustgc.trust.calibration import Calibration
from trustgc.trust.statistics import STATISTICS, surrogate_of, torch_form_of

__all__ = [
    "AttackConfig",
    "AttackResult",
    "DETECT_STATISTICS",
    "DetectionPenalty",
    "LogitsFn",
    "SURROGATES",
    "bin_centres",
    "carlini_wagner_l2",
    "dc_attack_fn",
    "gc_attack_fn",
    "quantize_unit",
    "random_targets",
    "target_margin",
]

#: ``logits_fn(x)``: logits (B, K), or (logits, L_detect (B,)) for the detection-aware attack.
LogitsFn = Callable[[Tensor], Tensor | tuple[Tensor, Tensor]]

#: A statistic's differentiable stand-in: (scores, images in [0, 1]) -> (B,) values.
Surrogate = Callable[[LatentScores, Tensor], Tensor]
#: Smooth stand-ins for statistics without a gradient, by the surrogate name the registry
#: declares (trustgc.trust.statistics: the complexity tests name "png_length").  None is built
#: yet, so L_detect cannot include those statistics.
SURROGATES: dict[str, Surrogate] = {}

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_ABORT_TOLERANCE = 1e-4
_BOX_EPS = 1e-6


@dataclass(frozen=True)
class AttackConfig:
    """Hyper-parameters of one Carlini-Wagner run (see the module docstring)."""

    kappa: float = 0.01  # confidence cap; math.inf: no cap, run to the step budget
    d: float = 0.0  # weight of L_detect
    steps: int = 100  # Adam steps per binary-search round
    rounds: int = 3  # binary-search rounds over c
    c0: float = 1.0  # initial c
    lr: float = 0.01  # Adam learning rate on w
    abort_early: bool = True  # finite kappa: drop images whose loss stalls
    quantize: bool = False  # the model sees 8-bit images (straight-through gradient)

    def __post_init__(self) -> None:
        if not (self.kappa > 0 or self.kappa == 0):
            raise ValueError(f"kappa must be >= 0 or inf, got {self.kappa}")
        if self.d < 0 or self.steps < 1 or self.rounds < 1 or self.c0 <= 0 or self.lr <= 0:
            raise ValueError(f"invalid attack config {self}")


@dataclass(frozen=True)
class AttackResult:
    """Per image (B rows): the attack's best adversarial and what it cost."""

    adversarial: Tensor  # (B, C, H, W) in [0, 1]; the clean image where the attack failed
    success: Tensor  # (B,) bool: margin >= kappa (kappa = inf: > 0) reached
    l2: Tensor  # (B,) ||x_adv - x||_2 in [0, 1] pixel units; nan where it failed
    margin: Tensor  # (B,) l_t - max_{j != t} l_j of the returned image
    detect: Tensor | None  # (B,) L_detect of the returned image (d > 0 only)
    c: Tensor  # (B,) the c that produced the returned image; nan where it failed
    gradient_evaluations: int  # image-steps spent (forward + backward passes per image)


class DetectionPenalty:
    """L_detect = sum over the chosen statistics s of ((s(x) - mean_s) / std_s)^2.

    mean_s and std_s are the in-distribution summary of the calibration split, so L_detect is
    the squared z-score of the detection statistics: about 1 per statistic for clean images,
    large for atypical ones.  Each s is the registry's differentiable torch form of the served
    statistic (trustgc.trust.statistics), or the surrogate it names from :data:`SURROGATES`;
    the argmax inside ``class_distance`` is the current prediction, so the penalty is exactly
    the statistic the service computes (the gradient flows through z, not the argmax).

    The penalty follows each statistic's served side: two-sided tests penalise both
    deviations; a one-sided test only the suspicious one (``upper``: the excess above the
    mean, ``lower``: the shortfall below it).  An attacker gains nothing from pulling the other
    tail back, and for ``logit_margin`` a two-sided penalty would hold every iterate at its
    source class's typical margin and stop the attack from ever crossing the boundary.
    """

    def __init__(self, statistics: dict[str, tuple[float, float]]) -> None:
        if not statistics:
            raise ValueError("L_detect needs at least one statistic")
        unknown = set(statistics) - set(STATISTICS)
        if unknown:
            raise ValueError(f"unknown statistics {sorted(unknown)}; known: {sorted(STATISTICS)}")
        if any(std <= 0 for _, std in statistics.values()):
            raise ValueError("standard deviations must be positive")
        self.statistics = dict(statistics)
        self._forms = {name: _differentiable(name) for name in statistics}

    @classmethod
    def from_calibration(
        cls, calibration: Calibration, names: Sequence[str] = DETECT_STATISTICS
    ) -> DetectionPenalty:
        summaries = {name: calibration.components[name].summary for name in names}
        return cls({name: (s["mean"], s["std"]) for name, s in summaries.items()})

    def values(self, scores: LatentScores, images: Tensor | None = None) -> dict[str, Tensor]:
        """The raw statistics (B,) of the chosen names (``images``: for surrogates only)."""
        return {name: form(scores, images) for name, form in self._forms.items()}

    def terms(self, scores: LatentScores, images: Tensor | None = None) -> dict[str, Tensor]:
        """Each statistic's squared z-score (B,), clamped to its served side."""
        out = {}
        for name, value in self.values(scores, images).items():
            mean, std = self.statistics[name]
            z = (value - mean) / std
            side = STATISTICS[name].side
            if side == "upper":
                z = z.clamp(min=0.0)
            elif side == "lower":
                z = z.clamp(max=0.0)
            out[name] = z**2
        return out

    def __call__(self, scores: LatentScores, images: Tensor | None = None) -> Tensor:
        total = torch.zeros_like(scores.log_likelihood)
        for term in self.terms(scores, images).values():
            total = total + term
        return total


def _differentiable(name: str) -> Surrogate:
    """The statistic's torch form, else its named surrogate (a negation's: negated)."""
    form = torch_form_of(name)
    if form is not None:
        return lambda scores, images: form(scores)
    surrogate = surrogate_of(name)
    if surrogate is None or surrogate not in SURROGATES:
        raise ValueError(
            f"statistic {name!r} has no gradient and its surrogate {surrogate!r} is not "
            f"available (built: {sorted(SURROGATES)})"
        )
    stand_in = SURROGATES[surrogate]
    statistic = STATISTICS[name]
    if statistic.surrogate is None and statistic.negation_of is not None:  # inherited
        return lambda scores, images: -stand_in(scores, images)
    return stand_in


def gc_attack_fn(model: nn.Module, penalty: DetectionPenalty | None = None) -> LogitsFn:
    """The IB-INN's logits -||z - mu_y||^2 / 2 + log p(y), plus L_detect if ``penalty``."""
    model.eval()

    def logits_fn(x: Tensor):
        scores = model.score(x)
        return scores.logits if penalty is None else (scores.logits, penalty(scores, x))

    return logits_fn


def dc_attack_fn(model: nn.Module) -> LogitsFn:
    """The discriminative baseline's logits (no detection term)."""
    model.eval()
    return model


def target_margin(logits: Tensor, targets: Tensor) -> Tensor:
    """l_t - max_{j != t} l_j, (B,): positive iff the target is the (unique) argmax."""
    target_logit = logits.gather(1, targets[:, None])[:, 0]
    others = logits.scatter(1, targets[:, None], -math.inf)
    return target_logit - others.max(dim=1).values


def random_targets(labels: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray:
    """A uniformly random class != label per image, reproducible from ``seed``."""
    shift = np.random.default_rng(seed).integers(1, num_classes, size=len(labels))
    return (np.asarray(labels) + shift) % num_classes


def quantize_unit(x: Tensor) -> Tensor:
    """[0, 1] images -> uint8 pixels round(256 x - 1/2) clipped to 0..255.

    The inverse of :func:`trustgc.preprocess.pixels_to_unit` ((k + 1/2) / 256): the nearest
    bin centre, so the result is a real 8-bit image the service could receive.
    """
    return torch.clamp(torch.round(x * 256.0 - 0.5), 0, 255).to(torch.uint8)


def bin_centres(x: Tensor) -> Tensor:
    """The 8-bit image nearest to x, back in [0, 1]: pixels_to_unit(quantize_unit(x))."""
    return pixels_to_unit(quantize_unit(x))


def _evaluate(logits_fn: LogitsFn, x_adv: Tensor) -> tuple[Tensor, Tensor | None]:
    out = logits_fn(x_adv)
    return (out, None) if isinstance(out, Tensor) else out


def _run_round(
    logits_fn: LogitsFn,
    images: Tensor,
    targets: Tensor,
    c: Tensor,
    config: AttackConfig,
    best: dict[str, Tensor],
) -> tuple[Tensor, int, bool]:
    """One round of Adam at fixed per-image c.  Updates ``best`` in place (rows of ``images``).

    Returns which images succeeded at least once in the round, the image-steps spent and
    whether ``logits_fn`` returned a detection term.
    """
    n = images.shape[0]
    finite = math.isfinite(config.kappa)
    w0 = torch.atanh((2.0 * images - 1.0).clamp(-1.0 + _BOX_EPS, 1.0 - _BOX_EPS))
    delta = torch.zeros_like(images)
    m = torch.zeros_like(images)
    v = torch.zeros_like(images)
    beta1, beta2 = _ADAM_BETAS
    succeeded = torch.zeros(n, dtype=torch.bool)
    active = torch.arange(n)
    previous = torch.full((n,), math.inf)
    check_every = max(1, config.steps // 10)
    spent = 0
    has_detect = False
    for step in range(config.steps + 1):
        if active.numel() == 0:
            break
        w = (w0[active] + delta[active]).requires_grad_(True)
        x_adv = (torch.tanh(w) + 1.0) / 2.0
        if config.quantize:  # forward the nearest 8-bit image, gradient straight through
            x_adv = x_adv + (bin_centres(x_adv) - x_adv).detach()
        logits, detect = _evaluate(logits_fn, x_adv)
        has_detect = detect is not None
        margin = target_margin(logits, targets[active])
        l2sq = (x_adv - images[active]).pow(2).flatten(1).sum(dim=1)
        with torch.no_grad():
            ok = margin >= config.kappa if finite else margin > 0
            succeeded[active] |= ok
            # finite kappa: the smallest successful L2; kappa = inf (run to the budget): the
            # current iterate of every image that is on target
            better = ok & (l2sq < best["l2sq"][active]) if finite else ok
            rows = active[better]
            best["l2sq"][rows] = l2sq[better].detach()
            best["adversarial"][rows] = x_adv[better].detach()
            best["margin"][rows] = margin[better].detach()
            best["c"][rows] = c[rows]
            if detect is not None:
                best["detect"][rows] = detect[better].detach()
            if not finite:  # an iterate that falls off the target no longer counts
                lost = active[~ok]
                best["l2sq"][lost] = math.inf
                best["margin"][lost] = margin[~ok].detach()
        if step == config.steps:
            break
        # max(max_{j != t} l_j - l_t, -kappa); no cap for kappa = inf
        class_term = torch.clamp(-margin, min=-config.kappa) if finite else -margin
        loss = l2sq + c[active] * class_term
        if detect is not None and config.d > 0:
            loss = loss + config.d * detect
        (grad,) = torch.autograd.grad(loss.sum(), w)
        spent += active.numel()
        with torch.no_grad():
            t = step + 1
            m[active] = beta1 * m[active] + (1 - beta1) * grad
            v[active] = beta2 * v[active] + (1 - beta2) * grad * grad
            m_hat = m[active] / (1 - beta1**t)
            v_hat = v[active] / (1 - beta2**t)
            delta[active] -= config.lr * m_hat / (v_hat.sqrt() + _ADAM_EPS)
            if finite and config.abort_early and (step + 1) % check_every == 0:
                loss = loss.detach()
                before = previous[active]
                stalled = torch.isfinite(before) & (loss > before - _ABORT_TOLERANCE * before.abs())
                previous[active] = loss
                active = active[~stalled]
    return succeeded, spent, has_detect


@torch.enable_grad()  # the attack needs input gradients, whatever the caller's grad mode
def carlini_wagner_l2(
    logits_fn: LogitsFn, images: Tensor, targets: Tensor, config: AttackConfig
) -> AttackResult:
    """Targeted CW-L2 attack on a batch: images (B, C, H, W) in [0, 1], targets (B,) int.

    No loop over images: every step is one batched forward/backward pass of ``logits_fn``.
    The model's parameters receive no gradients (``torch.autograd.grad`` on the input only).
    """
    if images.dim() != 4 or targets.shape != (images.shape[0],):
        raise ValueError(f"need images (B, C, H, W), targets (B,): {images.shape} {targets.shape}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError("images must lie in [0, 1]")
    images = images.detach().float()
    targets = targets.long()
    n = images.shape[0]
    finite = math.isfinite(config.kappa)
    best = {
        "l2sq": torch.full((n,), math.inf),
        "adversarial": images.clone(),
        "margin": torch.full((n,), -math.inf),
        "c": torch.full((n,), math.nan),
        "detect": torch.full((n,), math.nan),
    }
    c = torch.full((n,), float(config.c0))
    lower = torch.zeros(n)
    upper = torch.full((n,), math.inf)
    todo = torch.arange(n)  # images attacked in the next round
    spent = 0
    uses_detect = False
    for _ in range(config.rounds):
        if todo.numel() == 0:
            break
        sub_best = {key: value[todo].clone() for key, value in best.items()}
        succeeded, cost, has_detect = _run_round(
            logits_fn, images[todo], targets[todo], c[todo], config, sub_best
        )
        spent += cost
        uses_detect = uses_detect or has_detect
        for key, value in sub_best.items():
            best[key][todo] = value
        if finite:  # bisection on every image, CW style
            upper[todo] = torch.where(succeeded, torch.minimum(upper[todo], c[todo]), upper[todo])
            lower[todo] = torch.where(succeeded, lower[todo], torch.maximum(lower[todo], c[todo]))
            bounded = torch.isfinite(upper)
            c = torch.where(bounded, (lower + upper) / 2, c * 10)
        else:  # fixed budget: rerun only the images still off target, with 10 c
            on_target = torch.isfinite(sub_best["l2sq"])
            c[todo[~on_target]] *= 10
            todo = todo[~on_target]
    success = torch.isfinite(best["l2sq"])
    l2 = torch.where(success, best["l2sq"].sqrt(), torch.full_like(best["l2sq"], math.nan))
    adversarial = torch.where(success[:, None, None, None], best["adversarial"], images)
    return AttackResult(
        adversarial=adversarial,
        success=success,
        l2=l2,
        margin=best["margin"],
        detect=best["detect"] if uses_detect else None,
        c=torch.where(success, best["c"], torch.full_like(best["c"], math.nan)),
        gradient_evaluations=spent,
    )
