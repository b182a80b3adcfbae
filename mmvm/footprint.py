"""The memory one training step needs, estimated before anything is allocated.

A site refuses a run whose step would exhaust its host (``max-step-gib`` in its node
config). The parameters alone do not bound it: a step keeps every layer's output for
the backward pass (``batch x channels x pixels`` for a convolution, whose weights are
few), and the objective compares every pair of the configured modalities' posteriors
(``batch x M x M x latent``) whether or not the site holds them. Both are counted on
torch's meta device: shapes only, no memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from mmvm.classifier_nets import ImageClassifier, build_classifier
from mmvm.config import ExperimentConfig
from mmvm.training import build_model

FLOAT_BYTES = 4
# tensors of [B, M, M, D] the closed-form pairwise KL makes (variance ratio, mean
# difference, its square, their sum, the log, the result), and of [B, M, D] the step
# holds per modality slot (mu, logvar, noise, z and their gradients)
PAIRWISE_TENSORS, SLOT_TENSORS = 6, 8


def step_bytes(cfg: ExperimentConfig, names: list[str], batch_size: int) -> int:
    """Bytes of the tensors one training step at a site holding ``names`` creates at
    ``batch_size`` rows: every layer's output of its encoders and decoders (a
    forward pass on the meta device; the backward pass reuses them) plus the
    objective's terms over all ``cfg``'s modalities. An upper bound of the forward's
    live set: in-place and freed intermediates are counted too."""
    with torch.device("meta"):
        model = build_model(cfg, names)
        count = _layer_outputs(model, batch_size)
    m, d = len(cfg.model.modalities), model.code_dim
    count += batch_size * m * (PAIRWISE_TENSORS * m * d + SLOT_TENSORS * d)
    return count * FLOAT_BYTES


def _layer_outputs(model: nn.Module, batch_size: int) -> int:
    """Elements of each modality's batch and of every leaf module's outputs in one
    encode-decode pass of each of ``model``'s modalities (on the meta device)."""
    def passes() -> int:
        total = 0
        for name, spec in model.specs.items():
            dtype = torch.long if spec.kind == "tokens" else torch.float32
            x = torch.zeros(batch_size, *spec.shape, dtype=dtype)
            total += x.numel()  # the batch itself
            mu, _ = model.encoders[name](x)
            model.decoders[name](mu)
        return total

    return _leaf_outputs(model, passes)


def _leaf_outputs(model: nn.Module, run: Callable[[], int]) -> int:
    """Elements of every leaf module's outputs while ``run()`` runs, plus what it
    returns (the elements it made itself)."""
    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        outs = output if isinstance(output, (tuple, list)) else (output,)
        total += sum(t.numel() for t in outs if isinstance(t, torch.Tensor))

    leaves = [m for m in model.modules() if not next(m.children(), None)]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        made = run()  # (not total += run(): that reads total before the hooks add)
    finally:
        for h in hooks:
            h.remove()
    return total + made


def judge_step_bytes(shape: Sequence[int], classes: int, width: int, vocab: int,
                     rows: int, shift: int = 0, rotate: float = 0.0) -> int:
    """Bytes one training step of a coherence judge (one ensemble member: they train
    one after another) creates at ``rows`` rows: the batch, its shifted copy padded
    by ``shift`` pixels each side and its rotation grid where the judge is an image
    CNN (``mmvm/augment.py``), every layer's output. The recipe's width and batch are
    the run config's: the judge's parameters alone do not bound this."""
    with torch.device("meta"):
        net = build_classifier(shape, classes, width, vocab)
        x = torch.zeros(rows, *shape, dtype=torch.long if vocab else torch.float32)

        def step() -> int:  # the batch's own elements; the layers' by the hooks
            net(x)
            return x.numel()

        count = _leaf_outputs(net, step)
    if isinstance(net, ImageClassifier):
        c, h, w = (int(s) for s in shape)
        count += rows * c * 28 * 28  # its input resized to 28 x 28 (not a module)
        # the padded copy, the crop gathered from it and its index tensors
        count += rows * c * ((h + 2 * shift) * (w + 2 * shift) + 2 * h * w) * (shift > 0)
        # affine_grid's base and sampling grids, the turned copy
        count += rows * (5 * h * w + c * h * w) * (rotate > 0)
    return count * FLOAT_BYTES


def table_bytes(cfg: ExperimentConfig, rows: int, modalities: int) -> int:
    """Bytes of posterior tables, (mu, logvar) in float32, of ``modalities`` for
    ``rows`` rows: what a window's message makes a site hold (the others' posteriors
    it receives and its own it sends, kept with its state) and, for its train and test
    rows, what its final evaluation collects. The latent size is the run config's
    choice, and these grow with it and the rows, not with the batch: a huge latent
    over tiny networks passes max-params and a small batch's step."""
    code = cfg.model.latent_dim + cfg.model.private_dim
    return rows * modalities * 2 * code * FLOAT_BYTES
