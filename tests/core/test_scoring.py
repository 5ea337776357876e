"""Likelihoods, posteriors and bits/dim of ``trustgc.scoring`` against hand-computed numbers.

The toy case is an identity "network" (z = x, log-det 0) in D = 3 dimensions with two classes
whose means are set by hand, mu_0 = (1, 0, 0) and mu_1 = (0, 2, 0), and two latents:

    z_a = (0, 0, 0):  ||z_a - mu_0||^2 = 1,  ||z_a - mu_1||^2 = 4
    z_b = (1, 1, 1):  ||z_b - mu_0||^2 = 2,  ||z_b - mu_1||^2 = 3

All expected values below were worked out by hand (the float literals are those numbers to
double precision), never by calling the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from trustgc.head import GaussianMixtureHead
from trustgc.layers import InputNormalization
from trustgc.scoring import (
    LOG_256,
    bits_per_dim,
    class_logits,
    gaussian_log_normaliser,
    score_latents,
)

TWO_PI = 2.0 * math.pi
# -(3 / 2) log(2 pi)
NORMALISER_3D = -2.756815599614018
SQUARED = [[1.0, 4.0], [2.0, 3.0]]


def _toy_head(prior: tuple[float, float] | None = None) -> GaussianMixtureHead:
    """Two classes in three dimensions with hand-set means and (optionally) a non-uniform prior."""
    head = GaussianMixtureHead(num_classes=2, dim=3, init_distance=5.0).double()
    with torch.no_grad():
        head.full_means.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
        if prior is not None:  # softmax(log p) = p
            head.prior_logits.copy_(torch.tensor(prior, dtype=torch.float64).log())
    return head


def _toy_latents() -> torch.Tensor:
    return torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)


def _close(actual: torch.Tensor, expected, tol: float = 1e-12) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, rtol=0, atol=tol), (actual, expected)


def test_gaussian_log_normaliser_values() -> None:
    assert gaussian_log_normaliser(3) == pytest.approx(NORMALISER_3D, abs=1e-15)
    assert gaussian_log_normaliser(1) == pytest.approx(-0.9189385332046727, abs=1e-15)
    assert gaussian_log_normaliser(0) == 0.0


def test_squared_distances_by_hand() -> None:
    _close(_toy_head().squared_distances(_toy_latents()), SQUARED)


def test_class_log_likelihood_is_gaussian_log_density() -> None:
    z = _toy_latents()
    scores = score_latents(z, torch.zeros(2, dtype=torch.float64), _toy_head())
    # -||z - mu||^2 / 2 - (3/2) log(2 pi)
    _close(
        scores.class_log_likelihood,
        [[-3.256815599614018, -4.756815599614018], [-3.756815599614018, -4.256815599614018]],
    )
    _close(scores.squared_distances, SQUARED)
    assert scores.dim == 3
    # The same thing written as the formula, with torch's own Gaussian as a second opinion.
    for k, mean in enumerate(_toy_head().means().detach()):
        normal = torch.distributions.MultivariateNormal(mean, torch.eye(3, dtype=torch.float64))
        _close(scores.class_log_likelihood[:, k], normal.log_prob(z))


def test_log_likelihood_with_uniform_prior() -> None:
    scores = score_latents(_toy_latents(), torch.zeros(2, dtype=torch.float64), _toy_head())
    # log(0.5 e^-0.5 + 0.5 e^-2) - (3/2) log 2pi  and  log(0.5 e^-1 + 0.5 e^-1.5) - (3/2) log 2pi
    _close(scores.log_likelihood, [-3.748549502191211, -3.9758857959938565])
    # logits = -d/2 + log(1/2)
    log_half = -math.log(2.0)
    _close(scores.logits, [[-0.5 + log_half, -2.0 + log_half], [-1.0 + log_half, -1.5 + log_half]])


def test_log_likelihood_with_non_uniform_prior() -> None:
    head = _toy_head(prior=(0.75, 0.25))
    _close(head.log_prior().exp(), [0.75, 0.25])
    scores = score_latents(_toy_latents(), torch.zeros(2, dtype=torch.float64), head)
    # log(0.75 e^-0.5 + 0.25 e^-2) - (3/2) log 2pi  and  log(0.75 e^-1 + 0.25 e^-1.5) - ...
    _close(scores.log_likelihood, [-3.4727569739352786, -3.860363686571067])
    # The prior does not enter the class-conditional likelihoods.
    _close(
        scores.class_log_likelihood,
        [[-3.256815599614018, -4.756815599614018], [-3.756815599614018, -4.256815599614018]],
    )


@pytest.mark.parametrize(
    ("prior", "expected"),
    [
        # softmax(-d/2 + log p): p_0 e^{-d_0/2} / (p_0 e^{-d_0/2} + p_1 e^{-d_1/2})
        (
            None,
            [[0.8175744761936437, 0.18242552380635635], [0.6224593312018546, 0.3775406687981454]],
        ),
        (
            (0.75, 0.25),
            [[0.9307722154980691, 0.069227784501931], [0.8318243439635803, 0.16817565603641962]],
        ),
    ],
)
def test_posterior_is_hand_softmax(prior, expected) -> None:
    scores = score_latents(_toy_latents(), torch.zeros(2, dtype=torch.float64), _toy_head(prior))
    _close(scores.log_posterior.exp(), expected)
    _close(scores.log_posterior, torch.tensor(expected, dtype=torch.float64).log())
    # q(y|x) is also Bayes' rule on the class-conditional likelihoods: p(x|y) p(y) / p(x).
    log_prior = _toy_head(prior).log_prior().detach()
    bayes = scores.class_log_likelihood + log_prior - scores.log_likelihood.unsqueeze(1)
    _close(scores.log_posterior, bayes)


def test_logdet_shifts_likelihoods_but_not_posterior() -> None:
    z = _toy_latents()
    head = _toy_head(prior=(0.75, 0.25))
    base = score_latents(z, torch.zeros(2, dtype=torch.float64), head)
    logdet = torch.tensor([0.7, -1.2], dtype=torch.float64)
    shifted = score_latents(z, logdet, head)
    _close(shifted.class_log_likelihood, base.class_log_likelihood + logdet.unsqueeze(1))
    _close(shifted.log_likelihood, [-3.4727569739352786 + 0.7, -3.860363686571067 - 1.2])
    _close(shifted.log_posterior, base.log_posterior)
    _close(shifted.logits, base.logits)
    _close(shifted.logdet, logdet)


def test_class_logits_formula() -> None:
    squared = torch.tensor([[1.0, 4.0]], dtype=torch.float64)
    log_prior = torch.tensor([0.75, 0.25], dtype=torch.float64).log()
    _close(class_logits(squared, log_prior), [[-0.5 + math.log(0.75), -2.0 + math.log(0.25)]])


def test_bits_per_dim_of_standard_normal_at_origin() -> None:
    """Identity flow, both class means at 0 (so q = N(0, I)), z = 0.

    -log q(0) / D = 0.5 log(2 pi), so bits/dim = (0.5 log(2 pi) + log 256) / log 2
    = 0.5 log2(2 pi) + 8 = 9.32574806473616 whatever D is.
    """
    for dim in (2, 3):
        head = GaussianMixtureHead(num_classes=2, dim=dim, init_distance=5.0).double()
        with torch.no_grad():
            head.full_means.zero_()
        z = torch.zeros(1, dim, dtype=torch.float64)
        scores = score_latents(z, torch.zeros(1, dtype=torch.float64), head)
        _close(scores.log_likelihood, [-0.5 * dim * math.log(TWO_PI)])
        _close(scores.bits_per_dim(), [9.32574806473616])
        _close(scores.class_bits_per_dim(), [[9.32574806473616, 9.32574806473616]])
    assert math.isclose(LOG_256, 8 * math.log(2.0), rel_tol=0, abs_tol=1e-15)


def test_bits_per_dim_formula_values() -> None:
    # -log q / D = 1 nat/dim -> (1 + log 256) / log 2 = 1 / ln 2 + 8
    _close(bits_per_dim(torch.tensor([-10.0], dtype=torch.float64), 10), [9.442695040888963])
    # log q = 0 -> exactly 8 bits: a uniform density on [0, 1]^D is uniform over 256 levels.
    _close(bits_per_dim(torch.tensor([0.0], dtype=torch.float64), 7), [8.0])


def test_bits_per_dim_includes_input_scaling_logdet() -> None:
    """x = 0.5 everywhere, normalised by mean 0.5 and std 0.25: z = 0, log-det = D log 4.

    bits/dim = 0.5 log2(2 pi) + 8 - log2(4) = 7.32574806473616 (method-notes: minus the log-det
    of the input scaling per dimension).
    """
    layer = InputNormalization((0.5,), (0.25,)).double()
    x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    z, logdet = layer(x)
    z = z.flatten(1)
    _close(z, torch.zeros(1, 4))
    _close(logdet, [4 * math.log(4.0)])
    head = GaussianMixtureHead(num_classes=2, dim=4, init_distance=5.0).double()
    with torch.no_grad():
        head.full_means.zero_()
    _close(score_latents(z, logdet, head).bits_per_dim(), [7.32574806473616])


def test_expected_bits_per_dim_of_standard_normal_samples() -> None:
    """E[-log N(z; 0, I)] / D = 0.5 log(2 pi) + 0.5 for z ~ N(0, I) (Monte Carlo)."""
    head = GaussianMixtureHead(num_classes=2, dim=2, init_distance=5.0).double()
    with torch.no_grad():
        head.full_means.zero_()
    z = torch.randn(200_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scores = score_latents(z, torch.zeros(len(z), dtype=torch.float64), head)
    expected = (0.5 * math.log(TWO_PI) + 0.5 + LOG_256) / math.log(2.0)  # 10.046
    # -log q / D = 0.5 log 2pi + chi^2_2 / 4; sd of the mean = 0.5 / sqrt(n) nats ~ 0.0016 bits
    assert scores.bits_per_dim().mean().item() == pytest.approx(expected, abs=0.01)


def test_score_latents_checks_logdet_shape() -> None:
    with pytest.raises(ValueError, match="logdet must have shape"):
        score_latents(_toy_latents(), torch.zeros(3, dtype=torch.float64), _toy_head())


def test_squared_distances_checks_latent_shape() -> None:
    with pytest.raises(ValueError, match="expected latents of shape"):
        _toy_head().squared_distances(torch.zeros(2, 4, dtype=torch.float64))


# ------------------------------------------------------------------ the class-mean head


def _randomise_head(head: GaussianMixtureHead, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.copy_(
                torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            )


@pytest.mark.parametrize(("dim", "full_dims", "rank"), [(20, 5, 4), (40, 8, 16), (9, 3, 1)])
def test_low_rank_distances_match_materialised_means(dim: int, full_dims: int, rank: int) -> None:
    head = GaussianMixtureHead(3, dim, init_distance=5.0, full_dims=full_dims, rank=rank).double()
    assert head.is_low_rank
    _randomise_head(head)
    means = head.means().detach()
    assert means.shape == (3, dim)
    assert torch.equal(means[:, :full_dims], head.full_means.detach())
    z = torch.randn(7, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    direct = (z.unsqueeze(1) - means.unsqueeze(0)).pow(2).sum(dim=2)
    assert torch.allclose(head.squared_distances(z), direct, rtol=1e-12, atol=1e-10)
    # A latent placed exactly on a class mean is at distance 0 from it.
    on_mean = head.squared_distances(means[1:2])
    assert abs(on_mean[0, 1].item()) <= 1e-10
    assert on_mean[0, 0].item() > 1.0


def test_full_rank_distances_match_materialised_means() -> None:
    head = GaussianMixtureHead(4, 6, init_distance=3.0).double()
    assert not head.is_low_rank
    _randomise_head(head, seed=3)
    z = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    means = head.means().detach()
    direct = ((z[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    assert torch.allclose(head.squared_distances(z), direct, rtol=0, atol=1e-12)


@pytest.mark.parametrize("full_dims", [None, 6])
@pytest.mark.parametrize("init_distance", [5.0, 3.5])
def test_means_start_as_scaled_identity(full_dims: int | None, init_distance: float) -> None:
    head = GaussianMixtureHead(4, 10, init_distance=init_distance, full_dims=full_dims, rank=3)
    means = head.means().detach().double()
    expected = torch.zeros(4, 10, dtype=torch.float64)
    expected[:, :4] = torch.eye(4) * init_distance / math.sqrt(2.0)
    assert torch.allclose(means, expected, rtol=0, atol=1e-6)
    distances = torch.cdist(means, means)
    off_diagonal = distances[~torch.eye(4, dtype=torch.bool)]
    assert torch.allclose(off_diagonal, torch.full_like(off_diagonal, init_distance), atol=1e-6)
    # Uniform prior at init, and the prior is frozen unless it is learned.
    assert torch.allclose(head.log_prior(), torch.full((4,), -math.log(4.0)))
    assert not head.prior_logits.requires_grad
    assert GaussianMixtureHead(4, 10, 5.0, learn_prior=True).prior_logits.requires_grad


def test_head_rejects_bad_layout() -> None:
    with pytest.raises(ValueError, match="num_classes <= full_dims <= dim"):
        GaussianMixtureHead(5, 10, 5.0, full_dims=4)
    with pytest.raises(ValueError, match="num_classes <= full_dims <= dim"):
        GaussianMixtureHead(2, 10, 5.0, full_dims=11)


def test_head_sample_is_centred_on_the_class_mean() -> None:
    head = GaussianMixtureHead(3, 4, init_distance=5.0)
    torch.manual_seed(0)
    draws = head.sample(2, 20_000, temperature=0.5).detach()
    assert draws.shape == (20_000, 4)
    assert torch.allclose(draws.mean(0), head.means()[2].detach(), atol=0.02)
    assert torch.allclose(draws.std(0), torch.full((4,), 0.5), atol=0.02)
    with pytest.raises(ValueError, match="class_index"):
        head.sample(3, 1)
