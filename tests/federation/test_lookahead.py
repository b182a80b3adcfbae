"""A one-step window's encoder pass, run when its posteriors are sent, is the step's;
its decoder half, run while the reply travels, gives the step's gradients.

What the step takes over must be exactly the forward it would have run itself (the
same outputs, gradients and BatchNorm statistics), and it must be refused as soon as
anything it depends on changed: another step or other rows, a parameter or buffer
written in between (an optimizer step, FedAvg weights, a restore).
"""

from __future__ import annotations

import copy
import gc
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from mmvm import accel
from mmvm.aggregation import federated_methods, get_method
from mmvm.config import config_from_dict
from mmvm.data.dataset import MultimodalDataset
from mmvm.federation.lookahead import forward_ahead, start_ahead
from mmvm.federation.plan import PlanArgs
from mmvm.model import norm_buffers
from mmvm.objectives import site_loss
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


# ------------------------------------------------------------------ the decoder half
NAMES = ["a", "b"]  # the federation's modalities; the site below holds "a"
POOL = ThreadPoolExecutor(1)  # the decoder half's thread, as a site's


@pytest.fixture
def site_a():
    """A site's model of modality "a" (BatchNorm in its encoder and its decoder) and
    its data; the other modality's posteriors come from elsewhere."""
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"latent_dim": 3, "modalities": {
        "a": {"kind": "vector", "shape": [6], "width": 16},
        "b": {"kind": "vector", "shape": [4], "width": 16}}}, "train": {"seed": 1}})
    model = build_model(cfg, ["a"])
    model.encoders["a"] = nn.Sequential(nn.BatchNorm1d(6), model.encoders["a"])
    model.decoders["a"] = nn.Sequential(model.decoders["a"], nn.BatchNorm1d(6))
    rng = np.random.default_rng(0)
    data = MultimodalDataset([f"s{i}" for i in range(16)],
                             {"a": rng.normal(size=(16, 6)).astype(np.float32)},
                             {"a": 1.0}, rng.random((16, 1)) > 0.2)
    return model, data


def _others(seed=1):
    g = torch.Generator().manual_seed(seed)
    B = len(ROWS)
    mask = torch.rand(B, 2, generator=g) > 0.3
    return (torch.randn(B, 2, 3, generator=g), torch.randn(B, 2, 3, generator=g) * 0.3,
            mask, torch.randn(B, 2, 3, generator=g))


def _step_loss(model, x, mask, mu_all, lv_all, eps, method, own=None, reconstruct=None):
    return site_loss(model, x, mask, mu_all, lv_all, NAMES, method, 1.0, 0.2, eps, own,
                     reconstruct)


@pytest.mark.parametrize("method", federated_methods())
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_the_decoder_half_gives_the_gradients_of_the_whole_step(site_a, amp, method):
    """Decoders run ahead in a thread, the step runs the rest: every gradient, the
    loss and the BatchNorm statistics are bit for bit those of one backward pass."""
    model, data = site_a
    reference = copy.deepcopy(model).train()
    mu_all, lv_all, mask, eps = _others()
    ahead = _ahead(model, data, amp=amp)
    mask[:, 0] = ahead.mask[:, 0]
    share = 0.75  # the site's rows' share of the batch, as the step scales its loss
    ahead.decoded = start_ahead(
        POOL, model, ahead, NAMES, method, 1.0, 0.2, eps, share, amp)
    assert ahead.valid_for(model, 5, ROWS)
    with accel.autocast(amp, torch.device("cpu")):
        terms = _step_loss(model, ahead.x, mask, mu_all, lv_all, eps, method,
                           (ahead.mu, ahead.logvar), ahead.reconstruct())
        want = _step_loss(reference, data.batch(ROWS)["x"], mask, mu_all, lv_all, eps,
                          method)
    (terms.loss * share).backward()
    (want.loss * share).backward()
    assert torch.equal(terms.loss, want.loss) and torch.equal(terms.rec_ll, want.rec_ll)
    for (n, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(),
                              strict=True):
        assert q.grad is not None, n
        assert torch.equal(p.grad, q.grad), n
    for now, ref in zip(norm_buffers(model), norm_buffers(reference), strict=True):
        assert all(torch.equal(now[k], ref[k]) for k in ref)


@pytest.mark.parametrize("method", federated_methods())
def test_the_own_columns_of_z_need_no_other_modality(method):
    """What the decoder half rests on: for a method that federates, z_m is made from
    q(z_m | x_m) alone, so other modalities' posteriors do not change it."""
    g = torch.Generator().manual_seed(0)
    mu, lv, eps = (torch.randn(8, 3, 2, generator=g) for _ in range(3))
    z, _ = get_method(method)(mu, lv, torch.ones(8, 3, dtype=torch.bool), eps, 0.2)
    mu2, lv2 = mu.clone(), lv.clone()
    mu2[:, 1:], lv2[:, 1:] = 5.0, -2.0
    mask = torch.ones(8, 3, dtype=torch.bool)
    mask[:4, 2] = False
    z2, _ = get_method(method)(mu2, lv2, mask, eps, 0.7)
    assert torch.equal(z[:, 0], z2[:, 0])
    assert not torch.equal(z[:, 1], z2[:, 1])


def test_a_failed_decoder_half_is_refused_and_changes_nothing(site_a, monkeypatch):
    """The half is an optimisation: if it failed (say, out of memory in its backward),
    the step runs its own forward, as without it, and finds the error there if it is
    real. Waiting for it never raises; nothing it did stays in the model."""
    model, data = site_a
    ahead = _ahead(model, data)
    kept = [{k: b.clone() for k, b in d.items()} for d in norm_buffers(model)]

    def broken(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(model, "reconstruction_ll", broken)
    ahead.decoded = start_ahead(
        POOL, model, ahead, NAMES, "mmvm", 1.0, 0.0, _others()[3], 1.0, "off")
    ahead.settle()  # another message may come first: waiting never raises
    assert not ahead.valid_for(model, 5, ROWS)
    with pytest.raises(RuntimeError, match="decoder exploded"):
        ahead.reconstruct()  # asked anyway: the half's own error
    assert all(p.grad is None for p in model.parameters())
    for now, then in zip(norm_buffers(model), kept, strict=True):
        assert all(torch.equal(now[k], then[k]) for k in then)


def test_a_step_whose_loss_is_not_the_halfs_is_caught(site_a):
    """Decoded hands on the half's gradient whatever reaches it; if the step's loss
    were another (here: another share of the batch), that gradient would be wrong."""
    model, data = site_a
    mu_all, lv_all, mask, eps = _others()
    ahead = _ahead(model, data)
    mask[:, 0] = ahead.mask[:, 0]
    ahead.decoded = start_ahead(
        POOL, model, ahead, NAMES, "mmvm", 1.0, 0.2, eps, 0.5, "off")
    assert ahead.valid_for(model, 5, ROWS)
    terms = _step_loss(model, ahead.x, mask, mu_all, lv_all, eps, "mmvm",
                       (ahead.mu, ahead.logvar), ahead.reconstruct())
    with pytest.raises(RuntimeError, match="differs from the one its decoder half"):
        (terms.loss * 0.75).backward()


def test_running_ahead_changes_nothing_in_a_federation(tiny_polymnist, tiny_config,
                                                       tmp_path):
    """Sites with the decoder half and sites without it end bit for bit the same
    (parameters and BatchNorm statistics), with modalities missing from some rows."""
    cfg = tiny_config(tiny_polymnist, epochs=1)
    states = []
    for overlap in (True, False):
        specs, root = split(tiny_polymnist, tmp_path, "vertical", missing=0.3)
        sites = make_sites(cfg, specs, root)
        for s in sites.values():
            s.overlap = overlap
        res = federate(cfg, plain_endpoints(sites), exchange="step")
        assert [s.halves_reused for s in sites.values()] == [3 * overlap] * len(sites)
        # every window reports how long its half ran (window 0's ran after attach)
        assert all((r["ahead_s"] > 0) == overlap for r in res.history), res.history
        states.append({(s.name, k): v.clone() for s in sites.values()
                       for k, v in s.model.state_dict().items()})
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_a_site_waits_for_its_decoder_half_before_it_saves(tiny_polymnist, tiny_config,
                                                          tmp_path, monkeypatch):
    cfg = tiny_config(tiny_polymnist, epochs=1)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    site = next(iter(make_sites(cfg, specs, root).values()))
    n = len(site.data)
    site.attach(n, list(range(n)), np.arange(n), PlanArgs(batch_size=64, seed=3, epochs=1))
    released = threading.Event()
    decode = site.model.reconstruction_ll

    def slow(*args, **kwargs):
        released.wait(5)
        return decode(*args, **kwargs)

    monkeypatch.setattr(site.model, "reconstruction_ll", slow)
    site.encode_window(0)
    threading.Timer(0.3, released.set).start()
    site.save(tmp_path / "site.pt")
    assert released.is_set()  # save waited for the half, which had to be released
    assert site._ahead.decoded.done()


def test_a_used_pass_is_freed_at_once_not_by_the_garbage_collector(tiny_polymnist,
                                                                   tiny_config, tmp_path):
    """The half's function holds the pass that holds the half: the cycle must be
    broken when it ends, or each step's batch and graph wait for Python's GC."""
    cfg = tiny_config(tiny_polymnist, epochs=1)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    site = next(iter(make_sites(cfg, specs, root).values()))
    n = len(site.data)
    site.attach(n, list(range(n)), np.arange(n), PlanArgs(batch_size=64, seed=3, epochs=1))
    others = {}  # no other modality's posteriors: the step still runs
    site.encode_window(0)
    site.train_window(0, others)  # (builds the optimizer, whose first import keeps frames)
    gc.disable()
    try:
        site.encode_window(1)
        ahead = weakref.ref(site._ahead)
        site.train_window(1, others)
        assert site.halves_reused == 2
        assert ahead() is None
    finally:
        gc.enable()
