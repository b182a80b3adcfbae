"""MMVAE+: the objective against its formula, its gradients, and a run that learns."""

from __future__ import annotations

import math

import pytest
import torch

from mmvm.aggregation import aggregate, can_federate
from mmvm.config import ConfigError, config_from_dict
from mmvm.mmvaeplus import log_normal, mmvaeplus_loss
from mmvm.model import MultimodalVAE
from mmvm.objectives import compute_loss
from mmvm.training import build_model, train

D, P = 3, 2


def _model(M=3, seed=0):
    specs = config_from_dict({"model": {"method": "mmvaeplus", "latent_dim": D,
                                        "private_dim": P, "modalities": {
        f"v{i}": {"kind": "vector", "shape": [4], "likelihood": "gaussian", "width": 8}
        for i in range(M)}}}).model.modalities
    return MultimodalVAE(specs, D, seed=seed, private_dim=P)


def _inputs(B=5, M=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = {f"v{i}": torch.randn(B, 4, generator=g) for i in range(M)}
    return x, torch.randn(B, M, D + P, generator=g), torch.randn(B, M, M, P, generator=g)


def test_log_normal_is_the_gaussian_density():
    x, mu, lv = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    ref = torch.distributions.Normal(mu, torch.exp(0.5 * lv)).log_prob(x).sum(-1)
    torch.testing.assert_close(log_normal(x, mu, lv), ref)


def test_the_loss_is_the_formula_written_out():
    """Loop over samples, sources and targets exactly as the docstring's formula."""
    model, beta = _model(), 0.7
    x, eps, aux = _inputs()
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0], [1, 1, 1]]).bool()
    mu, lv = model.encode(x, mask)
    loss, rec_ll, reg, _ = mmvaeplus_loss(model, x, mask, mu, lv, beta, eps, aux)
    names, total = model.names, 0.0
    normal = torch.distributions.Normal
    for b in range(5):
        present = [m for m in range(3) if mask[b, m]]
        terms = []
        for r in present:
            code = mu[b, r] + torch.exp(0.5 * lv[b, r]) * eps[b, r]
            z, w = code[:D], code[D:]
            rec = 0.0
            for d in present:
                wd = w if d == r else aux[b, r, d] * torch.exp(model.aux_logstd[names[d]])
                out = model.decode(names[d], torch.cat([z, wd])[None])
                rec = rec + model.log_likelihood(names[d], x[names[d]][b:b + 1], out)[0]
            mix = torch.logsumexp(torch.stack([
                normal(mu[b, m, :D], torch.exp(0.5 * lv[b, m, :D])).log_prob(z).sum()
                for m in present]), 0) - math.log(len(present))
            kl = (mix + normal(mu[b, r, D:], torch.exp(0.5 * lv[b, r, D:])).log_prob(w).sum()
                  - normal(0.0, 1.0).log_prob(z).sum() - normal(0.0, 1.0).log_prob(w).sum())
            terms.append(-rec + beta * kl)
        total = total + sum(terms) / len(present)
    torch.testing.assert_close(loss, total / 5, rtol=1e-5, atol=1e-5)
    assert rec_ll[2, 0] == 0 and rec_ll[2, 1] != 0  # own reconstructions, 0 where absent


def test_gradients_reach_the_auxiliary_prior_and_every_network():
    model = _model()
    x, eps, aux = _inputs()
    mask = torch.ones(5, 3, dtype=torch.bool)
    mu, lv = model.encode(x, mask)
    mmvaeplus_loss(model, x, mask, mu, lv, 1.0, eps, aux)[0].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_a_modality_is_reconstructed_from_the_others_shared_latent():
    """Change x of v0 only: the cross term (source v0 -> target v1) changes, the
    (v2 -> v1) term does not."""
    model = _model()
    x, eps, aux = _inputs()
    mask = torch.ones(5, 3, dtype=torch.bool)
    cross = []
    for shift in (0.0, 3.0):
        xs = dict(x, v0=x["v0"] + shift)
        mu, lv = model.encode(xs, mask)
        cross.append(mmvaeplus_loss(model, xs, mask, mu, lv, 1.0, eps, aux)[3])
    assert not torch.allclose(cross[0][:, 0, 1], cross[1][:, 0, 1])
    torch.testing.assert_close(cross[0][:, 2, 1], cross[1][:, 2, 1])


def test_registry_config_and_evaluation_latents():
    assert not can_federate("mmvaeplus")
    for bad in ({"method": "mmvaeplus"}, {"method": "mmvm", "private_dim": 2}):
        with pytest.raises(ConfigError, match="private_dim"):
            config_from_dict({"model": {**bad, "modalities": {
                "v": {"kind": "vector", "shape": [4]}}}})
    mu, lv = torch.randn(2, 3, D + P), torch.randn(2, 3, D + P)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]]).bool()
    z, _ = aggregate("mmvaeplus", mu, lv, mask, torch.zeros_like(mu), private_dim=P)
    # an absent modality decodes the shared mean of a present one and the prior's mean
    torch.testing.assert_close(z[0, 1, :D], mu[0, 0, :D])
    assert torch.equal(z[0, 1, D:], torch.zeros(P))
    torch.testing.assert_close(z[1], mu[1])
    with pytest.raises(ValueError, match="no modality-specific latent"):
        aggregate("mmvm", mu, lv, mask, torch.zeros_like(mu), private_dim=P)


def test_mmvaeplus_trains_on_the_tiny_polymnist(tiny_polymnist, tiny_config, tmp_path):
    from mmvm.config import config_to_dict
    from mmvm.data import open_dataset
    from mmvm.evaluation import evaluate_run

    raw = config_to_dict(tiny_config(tiny_polymnist, epochs=3, out_dir=str(tmp_path)))
    raw.pop("source", None)
    raw["model"].update(method="mmvaeplus", private_dim=4)
    cfg = config_from_dict(raw)
    data = open_dataset(tiny_polymnist / "train.parquet", ["m0", "m1", "m2"], cfg.data)
    res = train(cfg, data, resume=False, show_progress=False)
    losses = [r["loss"] for r in res.history]
    assert losses[-1] < losses[0], losses
    assert build_model(cfg).code_dim == 8 + 4
    test = open_dataset(tiny_polymnist / "test.parquet", ["m0", "m1", "m2"], cfg.data)
    ev = evaluate_run(cfg, res.model, data, test)
    assert 0.0 <= ev["probe"]["mean"] <= 1.0 and math.isfinite(ev["reconstruction"]["total"])
    batch = data.batch(range(8))
    eps = torch.zeros(8, 3, 12)
    assert torch.isfinite(compute_loss(res.model, batch, "mmvaeplus", 1.0, 0.0, eps).loss)
