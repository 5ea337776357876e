"""Adversarial training inside the IB objective (issue 14's lever for a robust model).

Madry et al. (ICLR 2018) train on the worst case in an L2 ball.  For the IB-INN the question is
which term sees the worst case:

- **L_Y on adversarial inputs.**  The class-conditional likelihoods q(x|y) are what the
  classifier decides with, so the cross-entropy of q(y|x_adv) is what must hold inside the
  ball: ``adversarial_weight`` of L_Y is computed on x_adv (found by PGD-L2 on that same
  cross-entropy), the rest on the clean batch, which keeps clean accuracy (the TRADES-style
  trade-off, here as a plain mixture).
- **L_X on clean inputs only.**  Training the density on x_adv would teach the model that
  perturbed images are typical, which is exactly what the served typicality and likelihood
  tests must not believe.  So the likelihood keeps its meaning and an attacker who reaches
  another class must still pass the detector.

The attack (:func:`pgd_l2`) is the textbook one: random start in the ball, ``steps``
normalised-gradient steps of ``step_size``, projection onto the ball and onto [0, 1].  It
differentiates only with respect to the input (``torch.autograd.grad``), so weight gradients
are not computed during the attack.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import AdversarialConfig
from training.loss import IBLoss, loss_weights
from trustgc.scoring import LatentScores

__all__ = ["adversarial_ib_loss", "pgd_l2", "project_l2_ball"]


def project_l2_ball(delta: Tensor, radius: float) -> Tensor:
    """Scale each row of ``delta`` (B, ...) onto the L2 ball of ``radius`` when outside it."""
    norms = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
    factor = torch.clamp(radius / norms, max=1.0)
    return delta * factor.view(-1, *([1] * (delta.dim() - 1)))


def _random_in_ball(shape: torch.Size, radius: float, generator, device) -> Tensor:
    """Uniform direction, radius ~ U(0, 1) * eps: a start that is neither always on the
    surface nor concentrated at the centre."""
    direction = torch.randn(shape, generator=generator, device=device)
    direction = direction / direction.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
    scale = torch.rand(shape[0], generator=generator, device=device).view(-1, 1, 1, 1)
    return direction * scale * radius


def pgd_l2(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    config: AdversarialConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """x_adv in the L2 ball of ``config.epsilon`` around x (in [0, 1]) that raises the
    cross-entropy of q(y|x_adv) against ``labels`` (detached)."""
    step_size = config.resolved_step_size()
    delta = _random_in_ball(x.shape, config.epsilon, generator, x.device)
    delta = ((x + delta).clamp(0.0, 1.0) - x).detach()
    for _ in range(config.steps):
        delta.requires_grad_(True)
        logits = model.score(x + delta).logits
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            norm = grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
            delta = project_l2_ball(delta + step_size * grad / norm, config.epsilon)
            delta = (x + delta).clamp(0.0, 1.0) - x
    return (x + delta).detach()


def adversarial_ib_loss(
    scores: LatentScores,
    labels: Tensor,
    beta: float,
    adversarial_weight: float,
    label_smoothing: float = 0.0,
) -> IBLoss:
    """The loss of one forward pass over [clean batch; its adversarials] (2B rows, labels B):

        L = w_x * L_X(clean) + w_y * [(1 - a) * CE(clean) + a * CE(adversarial)]

    with (w_x, w_y) from :func:`training.loss.loss_weights` and a = ``adversarial_weight``.
    One pass over both halves keeps DDP's one-forward-one-backward contract."""
    n = labels.shape[0]
    if scores.logits.shape[0] != 2 * n:
        raise ValueError(
            f"expected 2 x {n} rows (clean, adversarial), got {scores.logits.shape[0]}"
        )
    l_x = (-scores.log_likelihood[:n] / scores.dim).mean()
    ce_clean = F.cross_entropy(scores.logits[:n], labels, label_smoothing=label_smoothing)
    ce_adversarial = F.cross_entropy(scores.logits[n:], labels, label_smoothing=label_smoothing)
    l_y = (1.0 - adversarial_weight) * ce_clean + adversarial_weight * ce_adversarial
    weight_x, weight_y = loss_weights(beta)
    return IBLoss(total=weight_x * l_x + weight_y * l_y, l_x=l_x, l_y=l_y)
