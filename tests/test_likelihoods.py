"""mmvm.likelihoods: closed forms against torch.distributions, and the means."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Laplace

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
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        likelihood_mean("poisson")
