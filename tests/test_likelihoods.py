"""mmvm.likelihoods: closed forms against torch.distributions, and the means."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Laplace, Poisson

from mmvm.config import ConfigError, ModalitySpec
from mmvm.likelihoods import get_likelihood, likelihood_mean


def test_bernoulli_equals_torch_distribution_summed_over_dimensions():
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(5, 40, generator=g)
    x = (torch.rand(5, 40, generator=g) < 0.5).float()
    want = Bernoulli(logits=logits).log_prob(x).sum(1)
    got = get_likelihood("bernoulli")(x, logits, 1.0)
    assert got.shape == (5,)
    torch.testing.assert_close(got, want)
    # extreme logits stay finite (log-sum-exp form, not log(sigmoid))
    far = get_likelihood("bernoulli")(torch.ones(1, 3), torch.full((1, 3), -200.0), 1.0)
    torch.testing.assert_close(far, torch.tensor([-600.0]))


def test_laplace_and_categorical_equal_torch_distributions():
    g = torch.Generator().manual_seed(1)
    x, loc = torch.rand(4, 3, 5, 5, generator=g), torch.rand(4, 3, 5, 5, generator=g)
    torch.testing.assert_close(get_likelihood("laplace")(x, loc, 0.75),
                               Laplace(loc, 0.75).log_prob(x).sum((1, 2, 3)))
    logits, ids = torch.randn(4, 32, 9, generator=g), torch.randint(0, 9, (4, 32), generator=g)
    torch.testing.assert_close(get_likelihood("categorical")(ids.float(), logits, 1.0),
                               Categorical(logits=logits).log_prob(ids).sum(1))


def test_means_map_decoder_outputs_to_data_space():
    out = torch.tensor([[[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]]])  # [1, 2 positions, 3]
    assert likelihood_mean("categorical")(out).tolist() == [[1.0, 0.0]]
    torch.testing.assert_close(likelihood_mean("bernoulli")(out), torch.sigmoid(out))
    for name in ("laplace", "gaussian", "mse"):
        assert likelihood_mean(name)(out) is out
    torch.testing.assert_close(likelihood_mean("poisson")(out), out.exp())
    with pytest.raises(ConfigError, match="'poisson' is for counts"):
        ModalitySpec("img", "image", (1, 28, 28), likelihood="poisson")
    with pytest.raises(ValueError, match="unknown likelihood 'negbinom'"):
        likelihood_mean("negbinom")


def test_poisson_equals_torch_distribution_and_its_gradient():
    """Counts under log-rates: the distribution's log-probability summed, and the
    gradient d/d out = x - e^out (zero where the rate equals the count)."""
    g = torch.Generator().manual_seed(2)
    x = torch.poisson(3 * torch.rand(4, 10, 6, generator=g), generator=g)
    out = torch.randn(4, 10, 6, generator=g, requires_grad=True)
    got = get_likelihood("poisson")(x, out, 1.0)
    torch.testing.assert_close(got, Poisson(out.exp()).log_prob(x).sum((1, 2)))
    got.sum().backward()
    torch.testing.assert_close(out.grad, x - out.detach().exp())
    at_mode = torch.log(torch.tensor([[2.0, 5.0]]))  # the rate that maximises it
    near = [get_likelihood("poisson")(torch.tensor([[2.0, 5.0]]), at_mode + d, 1.0)
            for d in (-0.1, 0.0, 0.1)]
    assert near[1] > near[0] and near[1] > near[2]
    # a runaway decoder output stays finite, in bf16 too (exp in float32)
    huge = get_likelihood("poisson")(torch.ones(1, 2), torch.full((1, 2), 200.0), 1.0)
    assert torch.isfinite(huge).all()
    assert torch.isfinite(likelihood_mean("poisson")(torch.full((2,), 200.0))).all()
    bf = get_likelihood("poisson")(x, out.detach().bfloat16(), 1.0)
    torch.testing.assert_close(bf, Poisson(out.detach().bfloat16().float().exp())
                               .log_prob(x).sum((1, 2)))
