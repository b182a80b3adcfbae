"""A one-step window's encoder pass, run when its posteriors are sent, is the step's.

What the step takes over must be exactly the forward it would have run itself (the
same outputs, gradients and BatchNorm statistics), and it must be refused as soon as
anything it depends on changed: another step or other rows, a parameter or buffer
written in between (an optimizer step, FedAvg weights, a restore).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from mmvm import accel
from mmvm.config import config_from_dict
from mmvm.data.dataset import MultimodalDataset
from mmvm.federation.lookahead import forward_ahead
from mmvm.model import norm_buffers
from mmvm.training import build_model
from tests.support.federate import federate, make_sites, plain_endpoints, split

ROWS = np.array([7, 2, 11, 5, 0, 9, 3, 14])


@pytest.fixture
def model_and_data():
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"latent_dim": 3, "modalities": {
        "a": {"kind": "vector", "shape": [6], "width": 16},
        "b": {"kind": "vector", "shape": [4], "width": 16}}}, "train": {"seed": 1}})
    model = build_model(cfg)
    model.encoders["a"] = nn.Sequential(nn.BatchNorm1d(6), model.encoders["a"])
    with torch.no_grad():  # running statistics that a forward visibly moves
        model.encoders["a"][0].running_mean.fill_(3.0)
    rng = np.random.default_rng(0)
    mask = rng.random((16, 2)) > 0.25
    data = MultimodalDataset([f"s{i}" for i in range(16)],
                             {"a": rng.normal(size=(16, 6)).astype(np.float32),
                              "b": rng.normal(size=(16, 4)).astype(np.float32)},
                             {"a": 1.0, "b": 1.0}, mask)
    return model, data


def _ahead(model, data, step=5, rows=ROWS, amp="off"):
    return forward_ahead(model, data, step, rows, torch.device("cpu"), amp, False)


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_the_pass_is_the_forward_the_step_would_run(model_and_data, amp):
    model, data = model_and_data
    reference = copy.deepcopy(model).train()
    before = [{k: b.clone() for k, b in d.items()} for d in norm_buffers(model)]
    ahead = _ahead(model.eval(), data, amp=amp)  # whatever mode it was in: the step trains
    for now, then in zip(norm_buffers(model), before, strict=True):  # untouched yet
        assert all(torch.equal(now[k], then[k]) for k in then)
    batch = data.batch(ROWS)
    with accel.autocast(amp, torch.device("cpu")):
        mu, logvar = reference.encode(batch["x"], batch["mask"])
    assert mu.dtype == (torch.bfloat16 if amp == "bf16" else torch.float32)
    assert torch.equal(ahead.mu, mu) and torch.equal(ahead.logvar, logvar)

    assert ahead.valid_for(model, 5, ROWS.copy())
    for now, ref in zip(norm_buffers(model), norm_buffers(reference), strict=True):
        assert all(torch.equal(now[k], ref[k]) for k in ref)  # updated once, as the step
    assert not torch.equal(norm_buffers(model)[0]["running_mean"],
                           before[0]["running_mean"])
    for mu_, lv_ in ((ahead.mu, ahead.logvar), (mu, logvar)):  # the same loss on each
        (mu_.square().sum() + lv_.exp().sum()).backward()
    for (n, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(),
                              strict=True):
        assert (p.grad is None) == (q.grad is None), n
        assert p.grad is None or torch.equal(p.grad, q.grad), n


def _write_a_parameter(model):
    with torch.no_grad():
        next(model.parameters()).mul_(1.0)  # same values, but written


def _load_weights(model):
    model.load_state_dict(copy.deepcopy(model.state_dict()))


def _write_a_buffer(model):
    with torch.no_grad():
        model.encoders["a"][0].running_var.mul_(1.0)


@pytest.mark.parametrize("change", [
    lambda m: (6, ROWS), lambda m: (5, ROWS[::-1].copy()),
    lambda m: _write_a_parameter(m) or (5, ROWS), lambda m: _write_a_buffer(m) or (5, ROWS),
    lambda m: _load_weights(m) or (5, ROWS)],
    ids=["another step", "other rows", "parameter written", "buffer written",
         "weights loaded"])
def test_the_pass_is_refused_once_anything_it_read_changed(model_and_data, change):
    model, data = model_and_data
    ahead = _ahead(model, data)
    step, rows = change(model)
    kept = [{k: b.clone() for k, b in d.items()} for d in norm_buffers(model)]
    assert not ahead.valid_for(model, step, rows)
    for now, then in zip(norm_buffers(model), kept, strict=True):
        assert all(torch.equal(now[k], then[k]) for k in then)


@pytest.mark.parametrize("shared", [False, True])
def test_sites_that_share_weights_do_not_keep_the_pass(tiny_polymnist, tiny_config,
                                                       tmp_path, shared):
    """Horizontal sites exchanging every step get averaged weights in every window
    after the first, so a kept pass would be refused each time: they encode without
    one. A site whose weights nobody else changes (vertical) keeps it every step."""
    cfg = tiny_config(tiny_polymnist, epochs=1)
    specs, root = split(tiny_polymnist, tmp_path, "horizontal" if shared else "vertical")
    sites = make_sites(cfg, specs, root)
    res = federate(cfg, plain_endpoints(sites), exchange="step")
    assert len(res.history) == 3
    assert [s.forwards_reused for s in sites.values()] == [0 if shared else 3] * len(sites)
    assert all(bool(s.linked().shared) == shared for s in sites.values())
    assert all(np.isfinite(r["rec_nll"]) for r in res.history)
