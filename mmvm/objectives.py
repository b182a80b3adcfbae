"""The MMVM objective and its pieces, as mathematics.

Sutter et al., "Unity by Diversity", NeurIPS 2024, section 3. Every unimodal posterior
q_m = N(mu_m, diag exp(lv_m)) (lv = log-variance) is regularised towards the
data-dependent mixture prior h(z | X) = 1/M sum_m' q_m'. The reference code optimises
the Jensen upper bound of sum_m KL(q_m || h) (KL is convex in its second argument):

    R = sum_m [ alpha KL(q_m || N(0, I)) + (1 - alpha)/M sum_m' KL(q_m || q_m') ]

with the own term m' = m included (it is 0), 1/M normalisation and nothing detached.
With a mask, M and both sums run over the modalities a sample has.

The loss is  mean_b [ -sum_m w_m log p(x_m | z_m) + beta R ].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from mmvm.model import MultimodalVAE


def kl_diag_gaussians(mu_a: Tensor, lv_a: Tensor, mu_b: Tensor, lv_b: Tensor) -> Tensor:
    """KL(N(mu_a, e^lv_a) || N(mu_b, e^lv_b)) for diagonal Gaussians, summed over the last dim.

    KL = 1/2 sum_d [ e^(lv_a - lv_b) + (mu_a - mu_b)^2 e^(-lv_b) - 1 + lv_b - lv_a ].
    Broadcasts over leading dimensions.
    """
    var_ratio = torch.exp(lv_a - lv_b)
    mahalanobis = (mu_a - mu_b).pow(2) * torch.exp(-lv_b)
    return 0.5 * (var_ratio + mahalanobis - 1.0 + lv_b - lv_a).sum(-1)


def kl_standard_normal(mu: Tensor, lv: Tensor) -> Tensor:
    """KL(N(mu, e^lv) || N(0, I)) summed over the last dim: 1/2 sum (e^lv + mu^2 - 1 - lv)."""
    return 0.5 * (torch.exp(lv) + mu.pow(2) - 1.0 - lv).sum(-1)


def _check_posteriors(mu: Tensor, logvar: Tensor, mask: Tensor | None) -> Tensor:
    """Validate [B, M, D] posterior parameters and return a boolean mask [B, M]."""
    if mu.dim() != 3:
        raise ValueError(f"mu must have shape [batch, M, latent], got {tuple(mu.shape)}")
    if logvar.shape != mu.shape:
        raise ValueError(
            f"logvar shape {tuple(logvar.shape)} does not match mu shape {tuple(mu.shape)}"
        )
    if mask is None:
        return torch.ones(mu.shape[:2], dtype=torch.bool, device=mu.device)
    if mask.shape != mu.shape[:2]:
        raise ValueError(
            f"mask must have shape [batch, M] = {tuple(mu.shape[:2])}, got {tuple(mask.shape)}"
        )
    mask = mask.to(device=mu.device, dtype=torch.bool)
    empty = (~mask.any(dim=1)).nonzero().flatten()
    if len(empty):
        raise ValueError(
            f"samples at batch rows {empty.tolist()[:10]} have no modality in the mask"
        )
    return mask


def pairwise_kl_matrix(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(q_m || q_m') for every ordered pair: [B, M, M] with entry [b, m, m']."""
    return kl_diag_gaussians(
        mu.unsqueeze(2), logvar.unsqueeze(2), mu.unsqueeze(1), logvar.unsqueeze(1)
    )


def mmvm_regularizer(
    mu: Tensor, logvar: Tensor, alpha: float = 0.0, mask: Tensor | None = None
) -> Tensor:
    """Per-sample MMVM regulariser R (closed-form pairwise bound), shape [B].

    Parameters
    ----------
    mu, logvar : [B, M, D] unimodal posterior means and log-variances.
    alpha : weight of the standard-normal term; 0 is pure MMVM, 1 independent VAEs.
    mask : optional bool [B, M]; modalities a sample lacks drop out of both sums
        and of the normaliser M (counted per sample).
    """
    mask = _check_posteriors(mu, logvar, mask)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    maskf = mask.to(mu.dtype)
    n_present = maskf.sum(dim=1)  # [B]
    pair = pairwise_kl_matrix(mu, logvar)  # [B, M, M]
    pair_mask = maskf.unsqueeze(2) * maskf.unsqueeze(1)
    # where() rather than multiply: an absent slot may hold garbage (even inf).
    mixture_term = torch.where(pair_mask.bool(), pair, torch.zeros_like(pair)).sum((1, 2))
    prior = torch.where(mask, kl_standard_normal(mu, logvar), torch.zeros_like(maskf))
    return alpha * prior.sum(1) + (1.0 - alpha) * mixture_term / n_present


def mixture_kl_monte_carlo(
    mu: Tensor,
    logvar: Tensor,
    mask: Tensor | None = None,
    num_samples: int = 64,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Monte-Carlo estimate of sum_m KL(q_m || h), h the mixture of the present q_m'. [B].

    This is the true KL to the mixture prior that ``mmvm_regularizer`` (alpha=0)
    upper-bounds; it is stochastic and costs ``num_samples`` mixture evaluations.
    """
    mask = _check_posteriors(mu, logvar, mask)
    B, M, D = mu.shape
    eps = torch.randn((num_samples, B, M, D), generator=generator, dtype=mu.dtype).to(mu.device)
    std = torch.exp(0.5 * logvar)
    z = mu + std * eps  # [S, B, M, D]: samples from each q_m
    # log q_k(z from q_m) for every component k: [S, B, M(sample), M(component)]
    zq = z.unsqueeze(3)
    log_comp = -0.5 * (
        ((zq - mu.unsqueeze(1)) ** 2) * torch.exp(-logvar.unsqueeze(1))
        + logvar.unsqueeze(1)
        + math.log(2 * math.pi)
    ).sum(-1)
    log_comp = log_comp.masked_fill(~mask[None, :, None, :], float("-inf"))
    n_present = mask.sum(1).to(mu.dtype)  # [B]
    log_h = torch.logsumexp(log_comp, dim=-1) - torch.log(n_present)[None, :, None]
    log_q = torch.diagonal(log_comp, dim1=2, dim2=3)  # [S, B, M]
    kl = (log_q - log_h).mean(0)  # [B, M]
    return torch.where(mask, kl, torch.zeros_like(kl)).sum(1)


# --------------------------------------------------------------------------- alpha
def alpha_schedule(
    kind: str, start: float = 1.0, end: float = 0.0, steps: int = 150_000
) -> Callable[[int], float]:
    """Annealing of alpha from ``start`` to ``end`` over ``steps`` optimiser steps.

    kinds: ``constant`` (always ``end``), ``linear``, ``cosine`` (half cosine) and
    ``exponential`` (geometric decay of (alpha - end) to 1e-3 of its size at ``steps``).
    After ``steps`` alpha stays at ``end``.
    """
    if kind not in _SCHEDULES:
        raise ValueError(f"unknown alpha schedule {kind!r}; choose one of {sorted(_SCHEDULES)}")
    if steps <= 0:
        raise ValueError(f"alpha annealing steps must be positive, got {steps}")
    shape = _SCHEDULES[kind]

    def alpha_at(step: int) -> float:
        t = min(max(step, 0) / steps, 1.0)
        return end + (start - end) * shape(t)

    return alpha_at


_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda t: 0.0,
    "linear": lambda t: 1.0 - t,
    "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * t)),
    "exponential": lambda t: 0.0 if t >= 1.0 else math.exp(math.log(1e-3) * t),
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
) -> LossTerms:
    """loss = mean_b [ -sum_m w_m log p(x_m | z_m) + beta R ] for any registered method."""
    mu, logvar = model.encode(batch["x"], batch["mask"])
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
) -> LossTerms:
    """The loss a site computes for the modalities it owns (``model.names``).

    ``names`` is the global modality order of ``mask`` [B, M], ``mu_all`` and
    ``logvar_all`` [B, M, D], which hold the other sites' posterior parameters for the
    same batch rows (constants here); the site's own slots are replaced by its
    encoders' outputs. Only the own modalities' reconstruction terms enter, so for the
    unimodal methods (mmvm, independent) the gradient with respect to the site's
    parameters equals the centralized gradient exactly (reference note, "Why this
    federates exactly"). The batch mean runs over all B rows, as centrally.
    """
    own = [names.index(n) for n in model.names]
    mu_own, lv_own = model.encode(x_own, mask[:, own])
    cols_mu, cols_lv = list(mu_all.unbind(1)), list(logvar_all.unbind(1))
    for j, m in enumerate(own):
        cols_mu[m], cols_lv[m] = mu_own[:, j], lv_own[:, j]
    mu, logvar = torch.stack(cols_mu, 1), torch.stack(cols_lv, 1)
    return _assemble_loss(model, x_own, mask, mu, logvar, names, method, beta, alpha, eps)


def _assemble_loss(model, x, mask, mu, logvar, names, method, beta, alpha, eps) -> LossTerms:
    from mmvm.aggregation import get_method

    z, reg = get_method(method)(mu, logvar, mask, eps, alpha)
    own = [names.index(n) for n in model.names]
    rec_own = model.reconstruction_ll(x, z[:, own], mask[:, own])  # [B, M_own]
    rec_ll = torch.zeros(mask.shape, dtype=rec_own.dtype, device=rec_own.device)
    rec_ll[:, own] = rec_own
    weights = torch.zeros(len(names), dtype=rec_own.dtype, device=rec_own.device)
    weights[own] = model.likelihood_weights.to(rec_own)
    loss = (-(rec_ll * weights).sum(1) + beta * reg).mean()
    return LossTerms(loss=loss, rec_ll=rec_ll, reg=reg, mu=mu, logvar=logvar)
