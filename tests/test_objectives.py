"""The loss written out from torch.distributions, and the alpha annealing schedules."""

import math

import pytest
import torch
from torch.distributions import Laplace, Normal, kl_divergence

from mmvm.config import ModalitySpec
from mmvm.model import MultimodalVAE
from mmvm.objectives import alpha_schedule, compute_loss


def _written_out_mmvm_loss(model, x, mask, eps, beta, alpha):
    """mean_b sum_m [ -w_m log p(x_m | z_m) + beta (alpha KL(q_m || N(0, I))
    + (1 - alpha) / n_b sum_m' KL(q_m || q_m')) ] over the n_b present modalities,
    z_m = mu_m + sigma_m eps_m; every density from torch.distributions."""
    mu, logvar = model.encode(x, mask)
    q = Normal(mu, torch.exp(0.5 * logvar))
    std = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    total = []
    for b in range(mask.shape[0]):
        present = mask[b].nonzero().flatten().tolist()
        n = len(present)
        value = 0.0
        for j in present:
            name, spec = model.names[j], model.specs[model.names[j]]
            z = mu[b, j] + torch.exp(0.5 * logvar[b, j]) * eps[b, j]
            out = model.decode(name, z[None])[0]
            ll = Laplace(out, spec.scale).log_prob(x[name][b]).sum()
            qj = Normal(mu[b, j], q.scale[b, j])
            kl_prior = kl_divergence(qj, Normal(std.loc[b, j], std.scale[b, j])).sum()
            kl_mix = sum(kl_divergence(qj, Normal(mu[b, k], q.scale[b, k])).sum()
                         for k in present)
            reg = alpha * kl_prior + (1 - alpha) / n * kl_mix
            value = value - spec.weight * ll + beta * reg
        total.append(value)
    return torch.stack(total).mean()


@pytest.mark.parametrize("beta,alpha", [(1.0, 0.0), (3.0, 0.0), (0.5, 0.3)])
def test_mmvm_loss_is_the_written_out_objective(beta, alpha):
    """Where beta and alpha enter, the likelihood weights and a sample missing a
    modality: the loss against its formula (a math review found beta's place untested)."""
    torch.manual_seed(0)
    specs = [ModalitySpec("a", "vector", (6,), width=8, layers=1, weight=2.0),
             ModalitySpec("b", "vector", (4,), width=8, layers=1, scale=0.5),
             ModalitySpec("c", "vector", (5,), width=8, layers=1)]
    model = MultimodalVAE(specs, latent_dim=3, seed=0).double().eval()
    B = 5
    x = {s.name: torch.randn(B, *s.shape, dtype=torch.float64) for s in specs}
    mask = torch.ones(B, 3, dtype=torch.bool)
    mask[1, 2] = mask[3, 0] = False
    eps = torch.randn(B, 3, 3, dtype=torch.float64)
    got = compute_loss(model, {"x": x, "mask": mask}, "mmvm", beta, alpha, eps).loss
    torch.testing.assert_close(got, _written_out_mmvm_loss(model, x, mask, eps, beta, alpha))


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_schedules_anneal_from_start_to_end(kind):
    f = alpha_schedule(kind, start=1.0, end=0.0, steps=100)
    values = [f(t) for t in range(0, 121)]
    assert values[0] == pytest.approx(1.0)
    assert values[100] == pytest.approx(0.0, abs=1e-12) and values[120] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:], strict=False))
    if kind == "linear":
        assert f(50) == pytest.approx(0.5)
    if kind == "cosine":
        assert f(50) == pytest.approx(0.5)


def test_exponential_schedule_is_the_authors_formula():
    """exp(ln(1e-10) t / T) from 1 to 0: 0.1 at t = 0.1 T, 1e-10 at T, and still
    decaying (never snapping to 0) after T."""
    f = alpha_schedule("exponential", start=1.0, end=0.0, steps=1000)
    assert f(0) == pytest.approx(1.0)
    assert f(100) == pytest.approx(0.1, rel=1e-6)
    assert f(500) == pytest.approx(1e-5, rel=1e-6)
    assert f(1000) == pytest.approx(1e-10, rel=1e-6)
    assert 0 < f(1500) < f(1000)
    values = [f(t) for t in range(0, 2000, 7)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    for t in (0, 37, 100, 999):  # the closed form
        assert f(t) == pytest.approx(math.exp(math.log(1e-10) * t / 1000), rel=1e-6)


def test_exponential_schedule_stops_at_a_positive_end():
    """Between two positive values: geometric from start to end, then held at end."""
    f = alpha_schedule("exponential", start=0.8, end=0.2, steps=100)
    assert f(0) == pytest.approx(0.8)
    assert f(50) == pytest.approx(math.sqrt(0.8 * 0.2), rel=1e-6)
    assert f(100) == pytest.approx(0.2) and f(300) == pytest.approx(0.2)


def test_unknown_schedule_lists_choices():
    with pytest.raises(ValueError, match="choose one of"):
        alpha_schedule("sigmoid")
