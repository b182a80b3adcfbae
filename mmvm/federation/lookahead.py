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

**The decoder half** (:func:`decode_ahead`). For the federated methods z_m depends on
the own posterior q(z_m | x_m) only, so the reconstruction terms, the decoders'
gradients and the loss's gradient with respect to the own columns of z need nothing
from the other sites. A site that stays in memory runs them in a thread while its
reply travels and the server routes (the site would otherwise wait idle); the step
then needs only the regulariser, the encoders' backward and the optimizer.
:class:`Decoded` stands in for the decoders in the step's graph and hands back the
gradient they computed, so the parameters end bit for bit as with one backward pass.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mmvm import accel
from mmvm.aggregation import get_method
from mmvm.model import norm_buffers, swap_norm_buffers
from mmvm.objectives import combine_loss


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
    decoded: Future | None = None  # the decoder half, when it runs ahead (start_ahead)

    def settle(self) -> None:
        """Wait for the decoder half (it uses the model) to end, if one runs."""
        if self.decoded is not None:
            self.decoded.exception()  # waits; never raises

    def valid_for(self, model: nn.Module, step: int, local: np.ndarray) -> bool:
        """Whether the step ``step`` over dataset rows ``local`` can use this pass;
        if so, BatchNorm running statistics become those the pass computed."""
        self.settle()
        if step != self.step or not np.array_equal(local, self.local) \
                or versions(model) != self.versions \
                or (self.decoded is not None and self.decoded.exception() is not None):
            return False  # a failed half: the step runs its own forward (and may fail)
        swap_norm_buffers(model, self.norms_after)
        return True

    def reconstruct(self) -> Callable[[Tensor], Tensor] | None:
        """What the step puts in place of its decoders when the decoder half ran
        (None when it did not; its error, if it failed)."""
        if self.decoded is None:
            return None
        (rec, grad_z, grad_rec), _ = self.decoded.result()
        if grad_z is None:  # no decoder ran: the step's own log-likelihoods are constants
            return lambda z_own: rec
        return lambda z_own: Decoded.apply(z_own, rec, grad_z, grad_rec)

    @property
    def ahead_seconds(self) -> float:
        """How long the decoder half ran (0 when none did or it failed)."""
        if self.decoded is None or self.decoded.exception() is not None:
            return 0.0
        return self.decoded.result()[1]


def start_ahead(pool: ThreadPoolExecutor, *args) -> Future:
    """:func:`decode_ahead` ``(*args)`` in ``pool``'s thread; the future's result is
    its outputs and the seconds it ran. (The pool drops the call, and with it the
    pass, once it ran: nothing keeps the step's batch and graph alive after it.)"""
    def timed():
        t = time.perf_counter()
        out = decode_ahead(*args)
        return out, time.perf_counter() - t

    return pool.submit(timed)


class Decoded(torch.autograd.Function):
    """log p(x | z_own) computed ahead, with its gradient with respect to ``z_own``:
    forward returns ``rec``, backward hands ``grad_z`` to z. What reaches ``rec`` in
    the step must be ``grad_rec``, what reached it in the half (the same loss, share
    and scale), or ``grad_z`` would be another loss's: checked, it costs nothing."""

    @staticmethod
    def forward(ctx, z_own: Tensor, rec: Tensor, grad_z: Tensor, grad_rec: Tensor
                ) -> Tensor:
        ctx.grad_z, ctx.grad_rec = grad_z, grad_rec
        return rec.clone()

    @staticmethod
    def backward(ctx, grad_rec: Tensor):
        if not torch.equal(grad_rec, ctx.grad_rec):
            raise RuntimeError("the step's loss differs from the one its decoder half "
                               "differentiated (mmvm.federation.lookahead): a bug")
        return ctx.grad_z, None, None, None


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


def decode_ahead(model, ahead: Lookahead, names: list[str], method: str, beta: float,
                 alpha: float, eps: Tensor, share: float, amp: str, scaler=None
                 ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The step's decoder half for the pass ``ahead``: decoders forward and backward
    from the own columns of z (their gradients go to the decoders' ``.grad``, which
    must be empty). Returns log p(x | z_own) [B, M_own], d loss / d z_own and
    d loss / d log p(x | z_own).

    ``names`` is the global modality order, ``eps`` [B, M, D] the step's noise,
    ``share`` the factor the step scales its loss by (its rows' share of the batch). z is
    made as the step makes it: a [B, M, D] stack with the own columns in place (the
    others are N(0, 1) stand-ins) through the method, so each own element passes
    through the same kernels as in the step and comes out bit for bit the same."""
    cols = [names.index(n) for n in model.names]
    device = ahead.mu.device
    B, D = ahead.mu.shape[0], ahead.mu.shape[-1]
    mu = torch.zeros(B, len(names), D, dtype=ahead.mu.dtype, device=device)
    logvar = torch.zeros_like(mu)
    mask = torch.ones(B, len(names), dtype=torch.bool)
    mu[:, cols], logvar[:, cols] = ahead.mu.detach(), ahead.logvar.detach()
    mask[:, cols] = ahead.mask
    mask = mask.to(device)
    before = norm_buffers(model)
    swap_norm_buffers(model, ahead.norms_after)  # decoders' statistics: the step's too
    try:
        with torch.enable_grad(), accel.autocast(amp, device):
            with torch.no_grad():
                z, reg = get_method(method)(mu, logvar, mask, eps.to(device), alpha)
            z_own = z[:, cols].requires_grad_()
            rec = model.reconstruction_ll(ahead.x, z_own, mask[:, cols])
            if not rec.requires_grad:  # no own modality in the batch: no decoder ran
                return rec.detach(), None, None
            rec.retain_grad()
            loss, _ = combine_loss(model, rec, torch.zeros_like(reg), mask, names, beta)
        loss = loss * share
        (loss if scaler is None else scaler.scale(loss)).backward()
    finally:
        swap_norm_buffers(model, before)
    return rec.detach(), z_own.grad, rec.grad
