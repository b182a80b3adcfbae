"""MMVAE+ cross-modal generation against its mathematics: the target t of a source s
decodes [z ~ q(z | x_s), w ~ r_t], r_t = N(0, diag exp(2 aux_logstd[t])), never the
source's private sample; s = s decodes its own [z_s, w_s]. Checked on the latent
itself (``conditional_latent``), on what coherence and the generation grid feed the
decoders, and on the aggregation's absent-modality slots."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmvm.aggregation import aggregate, has_private_latent
from mmvm.mmvaeplus import aux_logstds
from tests.support.evaluation_data import NAMES, oracle_model

torch.set_num_threads(1)

D, P = 10, 2  # the oracle's shared and private sizes
# distinct per modality and per dimension, so a wrong modality's prior shows
AUX = {"m0": [math.log(0.5), math.log(2.0)], "m1": [math.log(3.0), math.log(0.25)],
       "m2": [0.0, math.log(1.5)]}


class _ShiftPrivate(nn.Module):
    """An encoder whose private posterior is moved: mean + shift, log-variance + shift."""

    def __init__(self, inner: nn.Module, shift: float) -> None:
        super().__init__()
        self.inner, self.shift = inner, shift

    def forward(self, x):
        mu, lv = self.inner(x)
        off = torch.zeros_like(mu)
        off[:, D:] = self.shift
        return mu + off, lv + off


def _model(shift: float = 0.0):
    """The oracle MMVAE+ (identity one-hot encoders and decoders, private codes
    ignored by decoders) with known auxiliary priors; ``shift`` moves m0's private
    posterior (its log-variance too, so samples differ)."""
    model = oracle_model(private_dim=P)
    with torch.no_grad():
        for name, v in AUX.items():
            model.aux_logstd[name].copy_(torch.tensor(v))
    if shift:
        model.encoders["m0"] = _ShiftPrivate(model.encoders["m0"], shift)
    return model.eval()


def _x(n: int = 20_000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.eye(10)[torch.randint(0, 10, (n,), generator=g)]


def _onehots(ds, name: str) -> torch.Tensor:
    return ds.batch(torch.arange(len(ds)))["x"][name].float()


def _spy(model):
    """Record every (target, latent) that reaches ``model.generate``."""
    fed: list[tuple[str, torch.Tensor]] = []
    real = model.generate

    def generate(name, z):
        fed.append((name, z.detach().clone()))
        return real(name, z)

    model.generate = generate
    return fed


def test_absent_slots_draw_the_private_part_from_their_auxiliary_prior():
    B, M = 30_000, 3
    g = torch.Generator().manual_seed(4)
    mu, lv = torch.randn(B, M, D + P, generator=g), torch.randn(B, M, D + P, generator=g)
    eps = torch.randn(B, M, D + P, generator=g)
    mask = torch.zeros(B, M, dtype=torch.bool)
    mask[:, 1] = True
    aux = torch.tensor([AUX[n] for n in NAMES])
    z, _ = aggregate("mmvaeplus", mu, lv, mask, eps, private_dim=P, aux_logstd=aux)
    sample = mu + torch.exp(0.5 * lv) * eps
    torch.testing.assert_close(z[:, 1], sample[:, 1])  # the present one: its own
    for m in (0, 2):
        torch.testing.assert_close(z[:, m, :D], sample[:, 1, :D])
        torch.testing.assert_close(z[:, m, D:], eps[:, m, D:] * aux[m].exp())
        torch.testing.assert_close(z[:, m, D:].std(0), aux[m].exp(), rtol=0.03, atol=0)
    # without auxiliary priors: p(w) = N(0, I)
    z0, _ = aggregate("mmvaeplus", mu, lv, mask, eps, private_dim=P)
    torch.testing.assert_close(z0[:, 0, D:], eps[:, 0, D:])


def test_helpers_and_their_errors():
    model = _model()
    torch.testing.assert_close(aux_logstds(model), torch.tensor([AUX[n] for n in NAMES]))
    assert has_private_latent("mmvaeplus") and not has_private_latent("mmvm")
    mu = torch.zeros(2, 3, D + P)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="aux_logstd must be"):
        aggregate("mmvaeplus", mu, mu, mask, mu, private_dim=P, aux_logstd=torch.zeros(2, P))
    with pytest.raises(ValueError, match="no modality-specific latent"):
        aggregate("mmvm", mu, mu, mask, mu, aux_logstd=torch.zeros(3, P))
    with pytest.raises(ValueError, match="unknown method"):
        has_private_latent("nope")
