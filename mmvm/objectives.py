"""The loss: reconstruction terms plus a method's regulariser, and alpha's annealing.

Sutter et al., "Unity by Diversity", NeurIPS 2024, section 3. The loss of every method
in ``mmvm.aggregation`` is

    loss = mean_b [ -sum_m w_m log p(x_m | z_m) + beta R ]

with z_m and the per-sample regulariser R from the method (for MMVM,
``mmvm.divergences.mmvm_regularizer``, the mixture-prior bound) and w_m the
modalities' likelihood weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from mmvm.aggregation import get_method
from mmvm.mmvaeplus import mmvaeplus_loss

if TYPE_CHECKING:  # pragma: no cover
    from mmvm.model import MultimodalVAE


# --------------------------------------------------------------------------- alpha
def alpha_schedule(
    kind: str, start: float = 1.0, end: float = 0.0, steps: int = 150_000
) -> Callable[[int], float]:
    """Annealing of alpha from ``start`` to ``end`` over ``steps`` optimiser steps.

    As the authors' code (thomassutter/mmvmvae, ``MVVAE.*_annealing``):

    - ``constant``: always ``end``;
    - ``linear``: ``start + (end - start) t`` with ``t = step / steps``, then ``end``;
    - ``cosine``: ``end + (start - end) (1 + cos(pi t)) / 2``, then ``end``;
    - ``exponential``: ``max(start exp(r step), end)`` with
      ``r = (ln(end + 1e-10) - ln(start + 1e-10)) / steps``. From 1 to 0 this is
      ``exp(ln(1e-10) t)`` (0.1 at t = 0.1, 1e-10 at t = 1), which goes on decaying
      after ``steps`` and never snaps to 0.
    """
    if kind not in _SCHEDULES:
        raise ValueError(f"unknown alpha schedule {kind!r}; choose one of {sorted(_SCHEDULES)}")
    if steps <= 0:
        raise ValueError(f"alpha annealing steps must be positive, got {steps}")
    if kind == "exponential":
        rate = (math.log(end + 1e-10) - math.log(start + 1e-10)) / steps
        return lambda step: max(start * math.exp(rate * max(step, 0)), end)
    shape = _SCHEDULES[kind]

    def alpha_at(step: int) -> float:
        t = min(max(step, 0) / steps, 1.0)
        return end + (start - end) * shape(t)

    return alpha_at


_SCHEDULES: dict[str, Callable[[float], float] | None] = {
    "constant": lambda t: 0.0,
    "linear": lambda t: 1.0 - t,
    "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * t)),
    "exponential": None,  # not a shape of t: see alpha_schedule
}


# --------------------------------------------------------------------------- loss
@dataclass
class LossTerms:
    """The loss and its named terms; ``rec_ll`` is log p(x_m|z_m) per sample and modality."""

    loss: Tensor  # scalar
    rec_ll: Tensor  # [B, M], 0 where the modality is absent
    reg: Tensor  # [B]
    mu: Tensor  # [B, M, D]
    logvar: Tensor  # [B, M, D]


def compute_loss(
    model: MultimodalVAE,
    batch: dict,
    method: str,
    beta: float,
    alpha: float,
    eps: Tensor,
    aux_eps: Tensor | None = None,
) -> LossTerms:
    """loss = mean_b [ -sum_m w_m log p(x_m | z_m) + beta R ] for any registered method;
    MMVAE+ has its own objective (:mod:`mmvm.mmvaeplus`; ``aux_eps`` is its
    auxiliary prior's noise)."""
    mu, logvar = model.encode(batch["x"], batch["mask"])
    if method == "mmvaeplus":
        loss, rec_ll, reg, _ = mmvaeplus_loss(model, batch["x"], batch["mask"], mu, logvar,
                                              beta, eps, aux_eps)
        return LossTerms(loss=loss, rec_ll=rec_ll, reg=reg, mu=mu, logvar=logvar)
    return _assemble_loss(model, batch["x"], batch["mask"], mu, logvar, model.names, method, beta, alpha, eps)


def site_loss(
    model: MultimodalVAE,
    x_own: dict[str, Tensor],
    mask: Tensor,
    mu_all: Tensor,
    logvar_all: Tensor,
    names: list[str],
    method: str,
    beta: float,
    alpha: float,
    eps: Tensor,
    own: tuple[Tensor, Tensor] | None = None,
    reconstruct: Callable[[Tensor], Tensor] | None = None,
) -> LossTerms:
    """The loss a site computes for the modalities it owns (``model.names``).

    ``names`` is the global modality order of ``mask`` [B, M], ``mu_all`` and
    ``logvar_all`` [B, M, D], which hold the other sites' posterior parameters for the
    same batch rows (constants here); the site's own slots are replaced by its
    encoders' outputs. Only the own modalities' reconstruction terms enter, so for the
    unimodal methods (mmvm, independent) the gradient with respect to the site's
    parameters equals the centralized gradient exactly (reference note, "Why this
    federates exactly"). The batch mean runs over all B rows, as centrally.
    ``own``: the site's encoder outputs ``model.encode(x_own, own mask)`` for these
    rows when that pass already ran (``mmvm.federation.lookahead``).
    ``reconstruct``: log p(x_m | z_m) [B, M_own] from the own columns of z, in place
    of the decoders (the lookahead's decoder half already ran them).
    """
    cols = [names.index(n) for n in model.names]
    mu_own, lv_own = own if own is not None else model.encode(x_own, mask[:, cols])
    # others' values in the own columns' dtype: under autocast the centralized step
    # stacks every encoder's output in that lower precision, in which they were made
    cols_mu, cols_lv = (list(t.to(mu_own.dtype).unbind(1)) for t in (mu_all, logvar_all))
    for j, m in enumerate(cols):
        cols_mu[m], cols_lv[m] = mu_own[:, j], lv_own[:, j]
    mu, logvar = torch.stack(cols_mu, 1), torch.stack(cols_lv, 1)
    return _assemble_loss(model, x_own, mask, mu, logvar, names, method, beta, alpha, eps,
                          reconstruct)


def _assemble_loss(model, x, mask, mu, logvar, names, method, beta, alpha, eps,
                   reconstruct=None) -> LossTerms:
    z, reg = get_method(method)(mu, logvar, mask, eps, alpha)
    own = [names.index(n) for n in model.names]
    z_own = z[:, own]
    rec_own = reconstruct(z_own) if reconstruct is not None else \
        model.reconstruction_ll(x, z_own, mask[:, own])  # [B, M_own]
    loss, rec_ll = combine_loss(model, rec_own, reg, mask, names, beta)
    return LossTerms(loss=loss, rec_ll=rec_ll, reg=reg, mu=mu, logvar=logvar)


def combine_loss(model: MultimodalVAE, rec_own: Tensor, reg: Tensor, mask: Tensor,
                 names: list[str], beta: float) -> tuple[Tensor, Tensor]:
    """mean_b [ -sum_m w_m log p(x_m | z_m) + beta R ] from the own modalities'
    log-likelihoods ``rec_own`` [B, M_own] and the regulariser ``reg`` [B]; also
    log p(x_m | z_m) for all ``names`` [B, M] (0 for the modalities not own)."""
    own = [names.index(n) for n in model.names]
    rec_ll = torch.zeros(mask.shape, dtype=rec_own.dtype, device=rec_own.device)
    rec_ll[:, own] = rec_own
    weights = torch.zeros(len(names), dtype=rec_own.dtype, device=rec_own.device)
    weights[own] = model.likelihood_weights.to(rec_own)
    loss = (-(rec_ll * weights).sum(1) + beta * reg).mean()
    return loss, rec_ll
