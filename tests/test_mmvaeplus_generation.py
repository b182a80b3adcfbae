"""MMVAE+ cross-modal generation against its mathematics: the target t of a source s
decodes [z ~ q(z | x_s), w ~ p(w) = N(0, I)] as the authors' evaluation does (the
auxiliary prior r_t = N(0, diag exp(2 aux_logstd[t])) is the training cross term's,
and is set far from 1 here so the two cannot be confused), never the source's
private sample; s = s decodes its own [z_s, w_s]. Checked on the latent
itself (``conditional_latent``), on what coherence and the generation grid feed the
decoders, and on the aggregation's absent-modality slots."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmvm.aggregation import aggregate, has_private_latent
from mmvm.evaluation import coherence, conditional_latent
from mmvm.mmvaeplus import aux_logstds
from mmvm.plot_generations import generation_grid
from tests.support.evaluation_data import ARGMAX, NAMES, onehot_dataset, oracle_model

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


def test_the_target_decodes_the_source_shared_sample_and_the_fixed_prior():
    model, x = _model(), _x()
    eps = torch.randn(len(x), D + P, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mu, lv = model.encode_modality("m0", x)
        for t in ("m1", "m2"):
            z = conditional_latent(model, "mmvaeplus", "m0", x, eps, target=t)
            # shared: the source's reparametrised sample with this noise
            torch.testing.assert_close(z[:, :D], mu[:, :D] + torch.exp(0.5 * lv[:, :D])
                                       * eps[:, :D])
            # private: w = eps ~ N(0, I), not r_t's spread
            sigma = torch.ones(P)
            torch.testing.assert_close(z[:, D:], eps[:, D:] * sigma)
            torch.testing.assert_close(z[:, D:].std(0), sigma, rtol=0.03, atol=0)
            assert (z[:, D:].mean(0).abs() < 4 * sigma / math.sqrt(len(x))).all()
        own = conditional_latent(model, "mmvaeplus", "m0", x, eps, target="m0")
        torch.testing.assert_close(own, mu + torch.exp(0.5 * lv) * eps)  # [z_s, w_s]
        assert torch.equal(conditional_latent(model, "mmvaeplus", "m0", x, eps), own)
        mean = conditional_latent(model, "mmvaeplus", "m0", x, target="m2")
        torch.testing.assert_close(mean[:, :D], mu[:, :D])  # no noise: the means,
        assert torch.equal(mean[:, D:], torch.zeros(len(x), P))  # r_t's is 0


def test_the_generated_private_part_ignores_the_source_private_posterior():
    x = _x(500)
    eps = torch.randn(len(x), D + P, generator=torch.Generator().manual_seed(2))
    base, moved = _model(), _model(shift=5.0)
    with torch.no_grad():
        for t in ("m1", "m2"):
            a = conditional_latent(base, "mmvaeplus", "m0", x, eps, target=t)
            b = conditional_latent(moved, "mmvaeplus", "m0", x, eps, target=t)
            assert torch.equal(a, b)
        # the shift does reach the source's own code
        a = conditional_latent(base, "mmvaeplus", "m0", x, eps, target="m0")
        b = conditional_latent(moved, "mmvaeplus", "m0", x, eps, target="m0")
        assert (b[:, D:] - a[:, D:]).abs().min() > 1.0


def test_coherence_feeds_each_target_decoder_the_fixed_prior():
    n = 4000
    ds = onehot_dataset(n)
    fed = {}
    for shift in (0.0, 5.0):
        model = _model(shift)
        calls = _spy(model)
        res = coherence(model, ds, ARGMAX, "mmvaeplus", batch_size=1000, seed=3)
        assert res["mean"] == 1.0 and res["self"] == 1.0  # decoders ignore w
        # coherence loops: batch, source, target
        fed[shift] = {(s, t): torch.cat([z for i, (name, z) in enumerate(calls)
                                         if name == t and NAMES[i // 3 % 3] == s])
                      for s in NAMES for t in NAMES}
    for (s, t), z in fed[0.0].items():
        if s == t:  # own private sample: the oracle's posterior is N(0, e^-30)
            assert z[:, D:].abs().max() < 1e-5
            continue
        torch.testing.assert_close(z[:, D:].std(0), torch.ones(P), rtol=0.06, atol=0)
        torch.testing.assert_close(z[:, :D], _onehots(ds, s), atol=1e-5, rtol=0)
        # same seed, source private posterior moved: the same generations
        assert torch.equal(fed[5.0][(s, t)], z)
    assert (fed[5.0][("m0", "m0")][:, D:] > 4.0).all()


def test_generation_grid_decodes_targets_with_the_prior_mean(tmp_path):
    ds = onehot_dataset(6)
    model = _model(shift=5.0)
    calls = _spy(model)
    generation_grid(model, ds, tmp_path / "grid.png", n=6, method="mmvaeplus")
    assert len(calls) == 9  # per source (m0, m1, m2), per target
    for i, (t, z) in enumerate(calls):
        s = NAMES[i // 3]
        torch.testing.assert_close(z[:, :D], _onehots(ds, s), atol=1e-5, rtol=0)
        expected = 5.0 if s == t == "m0" else 0.0  # own mean, else r_t's mean 0
        torch.testing.assert_close(z[:, D:], torch.full((6, P), expected), atol=1e-5, rtol=0)


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
