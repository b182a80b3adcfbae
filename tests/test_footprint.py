"""A step's memory estimated on the meta device, against what torch really keeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmvm.config import config_from_dict, load_config
from mmvm.divergences import mmvm_regularizer
from mmvm.footprint import PAIRWISE_TENSORS, SLOT_TENSORS, step_bytes
from mmvm.training import build_model, count_parameters

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _saved_bytes(fn, params=()) -> int:
    """Bytes of the distinct tensors autograd saves for the backward pass while
    ``fn()`` runs, ``params``' storage aside: what a training step must hold."""
    seen: dict[tuple, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in params}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _modalities(config: str) -> list[str]:
    return [m.name for m in load_config(CONFIGS / f"{config}.toml").model.modalities]


@pytest.mark.parametrize("config,batch,name", [
    (c, b, m) for c, b in [("polymnist_cpu", 16), ("hippocampus", 64), ("cub", 8),
                           ("mimic_cxr_64", 4), ("celeba", 4)]
    for m in _modalities(c)[:2]])
def test_the_estimate_bounds_what_a_real_forward_pass_keeps(config, batch, name):
    """Every network family the configs ship (convolutions, ResNets, MLPs, token
    embeddings): the meta-device estimate is at least what autograd saves for the
    backward pass of a real encode-decode, and not wildly more (< 3x)."""
    cfg = load_config(CONFIGS / f"{config}.toml")
    model = build_model(cfg, [name])
    spec = model.specs[name]
    x = torch.zeros(batch, *spec.shape, dtype=torch.long) if spec.kind == "tokens" \
        else torch.rand(batch, *spec.shape)
    saved = _saved_bytes(lambda: model.decoders[name](model.encoders[name](x)[0]),
                         model.parameters())
    m, d = len(cfg.model.modalities), model.code_dim
    objective = 4 * batch * m * (PAIRWISE_TENSORS * m + SLOT_TENSORS) * d
    layers = step_bytes(cfg, [name], batch) - objective
    assert saved <= layers < 3 * saved


@pytest.mark.parametrize("b,m,d", [(16, 3, 8), (8, 24, 16)])
def test_the_objective_term_bounds_the_regulariser_and_grows_with_m_squared(b, m, d):
    """The pairwise KL over all configured modalities keeps [B, M, M, D] tensors:
    the estimate's term covers what the real regulariser saves."""
    mu = torch.randn(b, m, d, requires_grad=True)
    lv = torch.randn(b, m, d, requires_grad=True)
    saved = _saved_bytes(lambda: mmvm_regularizer(mu, lv))
    assert saved <= 4 * b * m * (PAIRWISE_TENSORS * m + SLOT_TENSORS) * d < 3 * saved


def test_modalities_the_site_does_not_hold_still_cost_memory(tmp_path):
    """A run config can declare modalities no site holds: the parameters at the site
    stay the same, the step's objective grows quadratically with them."""
    def cfg(extra: int):
        mods = {"m0": {"kind": "image", "shape": [3, 28, 28], "width": 4},
                **{f"x{i}": {"kind": "vector", "shape": [1]} for i in range(extra)}}
        return config_from_dict({"data": {"root": str(tmp_path)}, "model": {
            "latent_dim": 8, "modalities": mods}, "train": {"batch_size": 32}})

    base, many = step_bytes(cfg(2), ["m0"], 32), step_bytes(cfg(200), ["m0"], 32)
    assert count_parameters(cfg(2), ["m0"]) == count_parameters(cfg(200), ["m0"])
    assert many - base > 4 * 32 * PAIRWISE_TENSORS * (201 ** 2 - 3 ** 2) * 8 * 0.99
    assert step_bytes(cfg(2), ["m0"], 64) == 2 * base  # linear in the batch


@pytest.mark.parametrize("config", sorted(p.stem for p in CONFIGS.glob("*.toml")))
def test_every_shipped_modality_is_sized_within_the_default_limit(config):
    """A deployed site sizes its step at every attach: every modality of every
    shipped config can be sized (a token encoder's range check cannot run on the
    meta device), and fits the default max-step-gib at the config's batch."""
    from mmvm.federation.policy import LIMITS

    cfg = load_config(CONFIGS / f"{config}.toml")
    for m in cfg.model.modalities:
        assert 0 < step_bytes(cfg, [m.name], cfg.train.batch_size) < \
            LIMITS["max-step-gib"] * 2**30


@pytest.mark.parametrize("shape,vocab", [((3, 28, 28), 0), ((1, 64, 64), 0),
                                         ((40,), 0), ((32,), 50)],
                         ids=["image-rgb", "image-gray", "vector", "tokens"])
def test_a_judges_estimate_bounds_what_its_training_step_keeps(shape, vocab):
    """Every judge family (``mmvm/classifier_nets.py``): the estimate is at least what
    autograd saves for a real training step's backward, and not wildly more."""
    from mmvm.classifier_nets import build_classifier
    from mmvm.footprint import judge_step_bytes

    net = build_classifier(shape, 10, 16, vocab).train()
    x = torch.randint(0, vocab, (64, *shape)) if vocab else torch.rand(64, *shape)
    saved = _saved_bytes(lambda: net(x).sum().backward(), net.parameters())
    assert saved <= judge_step_bytes(shape, 10, 16, vocab, 64) < 3 * saved


@pytest.mark.parametrize("shape,shift,rotate", [((3, 28, 28), 4, 0.0),
                                                 ((3, 28, 28), 0, 15.0),
                                                 ((1, 64, 64), 3, 10.0)])
def test_a_judges_augmentation_is_counted(shape, shift, rotate):
    """What the estimate adds for shifted and turned copies (``mmvm/augment.py``) is
    at least every byte the augmentation's operations output (counted by a torch
    dispatch mode on a real batch)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from mmvm.augment import random_rotate, random_shift
    from mmvm.footprint import judge_step_bytes

    class Outputs(TorchDispatchMode):
        bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            self.bytes += sum(t.numel() * t.element_size() for t in outs
                              if isinstance(t, torch.Tensor))
            return out

    g, x = torch.Generator().manual_seed(0), torch.rand(16, *shape)
    with Outputs() as made:
        random_shift(random_rotate(x, rotate, g), shift, g)
    added = judge_step_bytes(shape, 10, 16, 0, 16, shift, rotate) - \
        judge_step_bytes(shape, 10, 16, 0, 16)
    assert made.bytes <= added < 2 * made.bytes


def test_a_judges_shifted_batch_is_counted_padded():
    """``eval.classifier_shift`` pads every image batch by that many pixels each side
    before it crops: the run config's shift alone can make a batch of a few images
    terabytes."""
    from mmvm.footprint import judge_step_bytes

    assert judge_step_bytes((3, 28, 28), 10, 16, 0, 128, shift=20_000) > 2**40
    assert judge_step_bytes((40,), 10, 16, 0, 128, shift=20_000) == \
        judge_step_bytes((40,), 10, 16, 0, 128)  # vectors are never shifted


@pytest.mark.parametrize("config", sorted(p.stem for p in CONFIGS.glob("*.toml")))
def test_every_shipped_configs_judges_fit_the_default_limit(config):
    """The judges of every shipped config's modalities under its own [eval], at the
    rows a judge scores at a time: well within the default max-step-gib."""
    from mmvm.classifiers import PREDICT_ROWS, recipe_for, vocabularies
    from mmvm.federation.policy import LIMITS
    from mmvm.footprint import judge_step_bytes

    cfg = load_config(CONFIGS / f"{config}.toml")
    r, vocab = recipe_for(cfg), vocabularies(cfg)
    for m in cfg.model.modalities:
        need = judge_step_bytes(m.shape, 10, r.width, vocab.get(m.name, 0),
                                max(r.batch_size, PREDICT_ROWS), r.shift, r.rotate)
        assert 0 < need < LIMITS["max-step-gib"] * 2**30 / 4, (m.name, need)
