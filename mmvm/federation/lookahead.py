"""The encoder pass a one-step window shares with the message before it.

With one optimiser step per window (``exchange = "step"``) a site answers window w
with its posteriors for the batch of window w+1, computed after its update, and then
trains that batch in window w+1 with the same parameters: the two encoder passes are
the same computation. :func:`forward_ahead` runs it once, with autograd on, exactly as
the training step would (same rows and order, same batch, autocast and memory
format), and the step takes it over (:meth:`Lookahead.valid_for`). It saves one
encoder forward per site and window, and the posteriors a site sends are then the
very ones its loss sees, as in the centralized model, where one forward feeds both.

The step takes the pass over only if nothing it depends on changed in between: the
same step and dataset rows, and no parameter or buffer written since (torch's
per-tensor identities and version counters; FedAvg weights, a restore or a rollback
all change them). Otherwise it is dropped and the step runs its own forward, as
without it. The pass updates copies of the BatchNorm running statistics: the model's
stay as they were (a step that never comes must not have updated them) until the step
takes the pass over and swaps the updated copies in.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mmvm import accel
from mmvm.model import norm_buffers, swap_norm_buffers


@dataclass
class Lookahead:
    """One step's own-modality encoder outputs, with their autograd graph."""

    step: int
    local: np.ndarray  # dataset rows of the step, in the step's order
    x: dict[str, Tensor]  # the batch, on the device, as the step feeds it
    mask: Tensor  # [B, M_own] which own modality each row has (on the CPU)
    mu: Tensor  # [B, M_own, D]
    logvar: Tensor
    norms_after: list[dict[str, Tensor]]  # BatchNorm buffers as the pass left them
    versions: tuple[tuple[int, int], ...]  # of the model's tensors after the pass

    def valid_for(self, model: nn.Module, step: int, local: np.ndarray) -> bool:
        """Whether the step ``step`` over dataset rows ``local`` can use this pass;
        if so, BatchNorm running statistics become those the pass computed."""
        if step != self.step or not np.array_equal(local, self.local) \
                or versions(model) != self.versions:
            return False
        swap_norm_buffers(model, self.norms_after)
        return True


def versions(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Identity and version counter of every parameter and buffer: a tensor swapped
    for another, or written in place (optimizer step, loaded weights), changes it."""
    return tuple((id(t), t._version)
                 for t in itertools.chain(model.parameters(), model.buffers()))


def step_inputs(data, local: np.ndarray, device: torch.device, channels_last: bool
                ) -> tuple[dict[str, Tensor], Tensor]:
    """A training step's inputs for dataset rows ``local``: the batch on ``device``
    in the step's memory format, and its modality mask (on the CPU)."""
    batch = data.batch(local)
    x = {k: v.to(device) for k, v in batch["x"].items()}
    if channels_last:
        x = {k: accel.to_channels_last(v) for k, v in x.items()}
    return x, batch["mask"]


def forward_ahead(model, data, step: int, local: np.ndarray, device: torch.device,
                  amp: str, channels_last: bool) -> Lookahead:
    """The training step's encoder pass over dataset rows ``local`` (model in training
    mode, autograd on). The model's BatchNorm buffers stay as they were: the pass
    updates copies, which the step swaps in."""
    x, mask = step_inputs(data, local, device, channels_last)
    model.train()  # as the step will be
    before = norm_buffers(model)
    swap_norm_buffers(model, [{k: b.clone() for k, b in named.items()} for named in before])
    try:
        with torch.enable_grad(), accel.autocast(amp, device):
            mu, logvar = model.encode(x, mask.to(device))
        after = norm_buffers(model)
    finally:
        swap_norm_buffers(model, before)
    return Lookahead(step, np.array(local, copy=True), x, mask, mu, logvar, after,
                     versions(model))
