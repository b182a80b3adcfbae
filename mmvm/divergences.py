"""Divergences between diagonal Gaussian posteriors: the MMVM regulariser's mathematics.

Sutter et al., "Unity by Diversity", NeurIPS 2024, section 3. Every unimodal posterior
q_m = N(mu_m, diag exp(lv_m)) (lv = log-variance) is regularised towards the
data-dependent mixture prior h(z | X) = 1/M sum_m' q_m'. The reference code optimises
the Jensen upper bound of sum_m KL(q_m || h) (KL is convex in its second argument):

    R = sum_m [ alpha KL(q_m || N(0, I)) + (1 - alpha)/M sum_m' KL(q_m || q_m') ]

with the own term m' = m included (it is 0), 1/M normalisation and nothing detached.
With a mask, M and both sums run over the modalities a sample has.
``mixture_kl_monte_carlo`` estimates the true sum_m KL(q_m || h) the bound majorises.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


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


def check_posteriors(mu: Tensor, logvar: Tensor, mask: Tensor | None) -> Tensor:
    """Validate [B, M, D] posterior parameters and return a boolean mask [B, M].

    Parameters
    ----------
    mu, logvar : [B, M, D] unimodal posterior means and log-variances.
    mask : optional [B, M]; which modalities each sample has. ``None`` means all.

    Raises
    ------
    ValueError
        On a shape mismatch, or when a sample has no modality in the mask.
    """
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
    mask = check_posteriors(mu, logvar, mask)
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
    mask = check_posteriors(mu, logvar, mask)
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
