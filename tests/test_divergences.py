"""The divergences checked against mathematics: closed forms, limits, bounds."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from mmvm.divergences import (
    kl_diag_gaussians,
    kl_standard_normal,
    mixture_kl_monte_carlo,
    mmvm_regularizer,
)


def rand_post(B=4, M=3, D=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    return torch.randn(B, M, D, generator=g, dtype=f64), 0.5 * torch.randn(B, M, D, generator=g, dtype=f64)


def test_closed_form_kl_equals_torch_distributions():
    mu, lv = rand_post(B=6, M=2, D=7)
    a = Normal(mu[:, 0], torch.exp(0.5 * lv[:, 0]))
    b = Normal(mu[:, 1], torch.exp(0.5 * lv[:, 1]))
    expected = kl_divergence(a, b).sum(-1)
    got = kl_diag_gaussians(mu[:, 0], lv[:, 0], mu[:, 1], lv[:, 1])
    torch.testing.assert_close(got, expected)
    std = Normal(torch.zeros_like(mu[:, 0]), torch.ones_like(mu[:, 0]))
    torch.testing.assert_close(kl_standard_normal(mu[:, 0], lv[:, 0]), kl_divergence(a, std).sum(-1))


def test_regularizer_matches_formula_written_out():
    mu, lv = rand_post()
    B, M, _ = mu.shape
    alpha = 0.3
    expected = torch.zeros(B, dtype=torch.float64)
    for m in range(M):
        expected += alpha * kl_standard_normal(mu[:, m], lv[:, m])
        for k in range(M):
            expected += (1 - alpha) / M * kl_diag_gaussians(mu[:, m], lv[:, m], mu[:, k], lv[:, k])
    torch.testing.assert_close(mmvm_regularizer(mu, lv, alpha), expected)


def test_identical_posteriors_give_zero():
    mu, lv = rand_post(M=1)
    mu, lv = mu.expand(-1, 4, -1), lv.expand(-1, 4, -1)
    torch.testing.assert_close(mmvm_regularizer(mu, lv), torch.zeros(mu.shape[0], dtype=torch.float64))


def test_single_modality_gives_zero():
    mu, lv = rand_post(M=1)
    torch.testing.assert_close(mmvm_regularizer(mu, lv), torch.zeros(mu.shape[0], dtype=torch.float64))


def test_alpha_one_is_independent_vaes():
    mu, lv = rand_post()
    expected = kl_standard_normal(mu, lv).sum(1)
    torch.testing.assert_close(mmvm_regularizer(mu, lv, alpha=1.0), expected)


def test_pairs_contribute_symmetric_jeffreys_divergence():
    mu, lv = rand_post(M=2)
    j = kl_diag_gaussians(mu[:, 0], lv[:, 0], mu[:, 1], lv[:, 1]) + kl_diag_gaussians(
        mu[:, 1], lv[:, 1], mu[:, 0], lv[:, 0]
    )
    torch.testing.assert_close(mmvm_regularizer(mu, lv), j / 2)


def test_upper_bounds_monte_carlo_kl_to_mixture():
    mu, lv = rand_post(B=8, M=3, D=4, seed=3)
    bound = mmvm_regularizer(mu, lv)
    g = torch.Generator().manual_seed(0)
    mc = mixture_kl_monte_carlo(mu, lv, num_samples=20_000, generator=g)
    assert torch.all(bound >= mc - 0.05), (bound, mc)
    assert torch.all(mc > -0.05)


def test_monte_carlo_mixture_of_one_is_plain_kl():
    mu, lv = rand_post(B=4, M=1, D=3)
    g = torch.Generator().manual_seed(1)
    # KL(q || q) = 0 exactly for each sample, whatever the draws
    torch.testing.assert_close(mixture_kl_monte_carlo(mu, lv, generator=g), torch.zeros(4, dtype=torch.float64))


def test_monte_carlo_two_far_components_approaches_log2():
    # two well separated components: KL(q_m || (q_1 + q_2)/2) -> log 2 each
    mu = torch.tensor([[[0.0], [50.0]]], dtype=torch.float64)
    lv = torch.zeros(1, 2, 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    mc = mixture_kl_monte_carlo(mu, lv, num_samples=2000, generator=g)
    torch.testing.assert_close(mc, torch.tensor([2 * math.log(2)], dtype=torch.float64), atol=1e-3, rtol=0)


def test_mask_drops_modalities_exactly():
    mu, lv = rand_post(B=3, M=3)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    garbage_mu, garbage_lv = mu.clone(), lv.clone()
    garbage_mu[~mask] = 1e3
    garbage_lv[~mask] = -5.0
    got = mmvm_regularizer(garbage_mu, garbage_lv, alpha=0.2, mask=mask)
    for b in range(3):
        keep = mask[b]
        ref = mmvm_regularizer(mu[b : b + 1, keep], lv[b : b + 1, keep], alpha=0.2)
        torch.testing.assert_close(got[b : b + 1], ref)


def test_gradients_reach_every_modality():
    mu, lv = rand_post()
    mu.requires_grad_(True)
    lv.requires_grad_(True)
    mmvm_regularizer(mu, lv).sum().backward()
    for m in range(mu.shape[1]):
        assert mu.grad[:, m].abs().sum() > 0 and lv.grad[:, m].abs().sum() > 0


def test_gradient_of_site_matches_formula_with_others_held_constant():
    """dR/dmu_m with the other modalities constant: the fact federation relies on."""
    mu, lv = rand_post(B=2, M=3, D=4)
    mu.requires_grad_(True)
    mmvm_regularizer(mu, lv).sum().backward()
    full = mu.grad[:, 0].clone()
    mu0 = mu[:, 0].detach().clone().requires_grad_(True)
    others = mu[:, 1:].detach()
    M = 3
    local = sum(
        kl_diag_gaussians(mu0, lv[:, 0], others[:, k], lv[:, k + 1])
        + kl_diag_gaussians(others[:, k], lv[:, k + 1], mu0, lv[:, 0])
        for k in range(2)
    ) / M
    local.sum().backward()
    torch.testing.assert_close(mu0.grad, full)


@pytest.mark.parametrize(
    "bad",
    [
        lambda mu, lv: (mu[0], lv[0], None),
        lambda mu, lv: (mu, lv[:, :2], None),
        lambda mu, lv: (mu, lv, torch.ones(4, 2, dtype=torch.bool)),
        lambda mu, lv: (mu, lv, torch.zeros(4, 3, dtype=torch.bool)),
    ],
)
def test_bad_shapes_raise_clear_errors(bad):
    mu, lv = rand_post()
    with pytest.raises(ValueError, match="shape|no modality"):
        a, b, mask = bad(mu, lv)
        mmvm_regularizer(a, b, mask=mask)
