"""The IB loss (``training.loss``) on a hand-worked toy case.

Toy case (as in tests/core/test_scoring.py): identity flow, D = 3, two classes with means
mu_0 = (1, 0, 0) and mu_1 = (0, 2, 0), uniform prior, latents z_a = 0 and z_b = (1, 1, 1) with
log-dets 0.7 and -1.2, labels 0 and 1.

    squared distances: z_a -> (1, 4), z_b -> (2, 3)
    log q(z_a) = log(e^-0.5 / 2 + e^-2 / 2) - 1.5 log 2pi + 0.7   = -3.048549502191211
    log q(z_b) = log(e^-1 / 2 + e^-1.5 / 2) - 1.5 log 2pi - 1.2   = -5.1758857959938565
    L_X = mean(-log q / 3) = 1.370739216364178
    q(0 | z_a) = sigmoid(1.5), q(1 | z_b) = sigmoid(-0.5)
    L_Y = (-log sigmoid(1.5) - log sigmoid(-0.5)) / 2             = 0.5877451310814296
"""

from __future__ import annotations

import math

import pytest
import torch

from training.loss import ib_loss, loss_weights
from trustgc.head import GaussianMixtureHead
from trustgc.scoring import LatentScores, score_latents

L_X = 1.370739216364178
L_Y = 0.5877451310814296
# (1 - eps) CE + eps * mean_k(-log q(k|x)) with eps = 0.1, by hand
L_Y_SMOOTHED_0_1 = 0.6127451310814296


def _head() -> GaussianMixtureHead:
    head = GaussianMixtureHead(num_classes=2, dim=3, init_distance=5.0).double()
    with torch.no_grad():
        head.full_means.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
    return head


def _scores(head: GaussianMixtureHead | None = None) -> LatentScores:
    z = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    logdet = torch.tensor([0.7, -1.2], dtype=torch.float64)
    return score_latents(z, logdet, head or _head())


LABELS = torch.tensor([0, 1])


def test_terms_by_hand() -> None:
    scores = _scores()
    assert torch.allclose(
        scores.log_likelihood,
        torch.tensor([-3.048549502191211, -5.1758857959938565], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )
    terms = ib_loss(scores, LABELS, beta=1.0)
    assert terms.l_x.item() == pytest.approx(L_X, abs=1e-12)
    assert terms.l_y.item() == pytest.approx(L_Y, abs=1e-12)
    # L_X is -log q(x) / D averaged over the batch, written out once more.
    by_formula = (-scores.log_likelihood / 3).mean()
    assert terms.l_x.item() == pytest.approx(by_formula.item(), abs=1e-15)
    direct_l_y = -(math.log(1 / (1 + math.exp(-1.5))) + math.log(1 / (1 + math.exp(0.5)))) / 2
    assert terms.l_y.item() == pytest.approx(direct_l_y, abs=1e-12)


@pytest.mark.parametrize("beta", [0.0, 1.0, 8.0])
def test_total_is_weighted_sum(beta: float) -> None:
    terms = ib_loss(_scores(), LABELS, beta=beta)
    expected = L_X / (1 + beta) + beta / (1 + beta) * L_Y
    assert terms.total.item() == pytest.approx(expected, abs=1e-12)
    # the same optimum as L_X + beta L_Y, scaled by 1 / (1 + beta)
    assert terms.total.item() == pytest.approx((L_X + beta * L_Y) / (1 + beta), abs=1e-12)


def test_specific_beta_values() -> None:
    assert ib_loss(_scores(), LABELS, beta=0.0).total.item() == pytest.approx(L_X, abs=1e-12)
    # beta = 1: plain mean of the two terms, 0.9792421737228039
    assert ib_loss(_scores(), LABELS, beta=1.0).total.item() == pytest.approx(
        0.9792421737228039, abs=1e-12
    )
    # beta = 8: (L_X + 8 L_Y) / 9 = 0.6747444738906238
    assert ib_loss(_scores(), LABELS, beta=8.0).total.item() == pytest.approx(
        0.6747444738906238, abs=1e-12
    )


def test_infinite_beta_is_cross_entropy_only() -> None:
    terms = ib_loss(_scores(), LABELS, beta=math.inf)
    assert terms.total.item() == pytest.approx(L_Y, abs=1e-12)
    assert terms.l_x.item() == pytest.approx(L_X, abs=1e-12)  # still reported
    assert loss_weights(math.inf) == (0.0, 1.0)


def test_gradient_follows_the_weights() -> None:
    """beta = inf must not push the latents towards high likelihood; beta = 0 must not classify."""
    head = _head()
    z = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    logdet = torch.zeros(2, dtype=torch.float64)
    ib_loss(score_latents(z, logdet, head), LABELS, beta=math.inf).total.backward()
    grad_ce = z.grad.clone()
    z.grad = None
    # Pure cross-entropy: only the direction mu_0 - mu_1 matters, the third coordinate never.
    assert grad_ce[:, 2].abs().max().item() == 0.0
    ib_loss(score_latents(z, logdet, head), LABELS, beta=0.0).total.backward()
    # Pure likelihood: d(-log q)/dz = sum_y q(y|z) (z - mu_y), divided by D and batch size.
    posterior = score_latents(z, logdet, head).log_posterior.exp().detach()
    means = head.means().detach()
    expected = (posterior.unsqueeze(2) * (z.detach().unsqueeze(1) - means)).sum(1) / (3 * 2)
    assert torch.allclose(z.grad, expected, rtol=0, atol=1e-12)


def test_label_smoothing_matches_torch_cross_entropy() -> None:
    scores = _scores()
    smoothed = ib_loss(scores, LABELS, beta=4.0, label_smoothing=0.1)
    assert smoothed.l_y.item() == pytest.approx(L_Y_SMOOTHED_0_1, abs=1e-12)
    reference = torch.nn.functional.cross_entropy(scores.logits, LABELS, label_smoothing=0.1)
    assert smoothed.l_y.item() == pytest.approx(reference.item(), abs=1e-12)
    assert smoothed.l_y.item() != pytest.approx(L_Y, abs=1e-3)
    assert smoothed.l_x.item() == pytest.approx(L_X, abs=1e-12)  # smoothing leaves L_X alone
    assert smoothed.total.item() == pytest.approx((L_X + 4.0 * L_Y_SMOOTHED_0_1) / 5, abs=1e-12)


def test_label_smoothing_with_prior_and_more_classes() -> None:
    head = GaussianMixtureHead(num_classes=4, dim=5, init_distance=5.0, learn_prior=True).double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        head.prior_logits.copy_(torch.randn(4, generator=generator, dtype=torch.float64))
    z = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    scores = score_latents(z, torch.zeros(6, dtype=torch.float64), head)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    for eps in (0.0, 0.05, 0.3):
        got = ib_loss(scores, labels, beta=2.0, label_smoothing=eps).l_y
        log_p = scores.log_posterior
        by_hand = -((1 - eps) * log_p[torch.arange(6), labels] + eps * log_p.mean(1)).mean()
        assert got.item() == pytest.approx(by_hand.item(), abs=1e-12)


@pytest.mark.parametrize("beta", [-1.0, -1e-9, math.nan, -math.inf])
def test_invalid_beta_raises(beta: float) -> None:
    with pytest.raises(ValueError, match="beta must be >= 0 or inf"):
        ib_loss(_scores(), LABELS, beta=beta)


def test_loss_weights() -> None:
    assert loss_weights(0.0) == (1.0, 0.0)
    assert loss_weights(1.0) == (0.5, 0.5)
    weight_x, weight_y = loss_weights(8.0)
    assert weight_x == pytest.approx(1 / 9) and weight_y == pytest.approx(8 / 9)
