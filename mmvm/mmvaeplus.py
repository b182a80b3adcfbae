"""MMVAE+ (Palumbo, Daunhawer, Vogt, ICLR 2023): a baseline with private latents.

Each encoder's code is a shared part z (``latent_dim``) and a modality-specific part
w (``private_dim``): q(z, w | x_m) = q(z | x_m) q(w | x_m), diagonal Gaussians. The
shared posterior of a sample is the mixture q(z | X) = 1/M sum_m q(z | x_m) over its
present modalities; priors p(z) = N(0, I), p(w) = N(0, I); each modality d has an
auxiliary prior r_d(w) = N(0, diag sigma_d^2) with a learnable sigma_d, from which
cross-reconstructions draw the private part they cannot know. The objective (the
paper's ELBO with K = 1, ``m_elbo`` of the authors' code) per sample::

    L = 1/M sum_r [ sum_d lambda_d log p(x_d | z_r, w_d^(r))
                    - beta ( log q(z_r | X) + log q(w_r | x_r) - log p(z_r) - log p(w_r) ) ]

with (z_r, w_r) ~ q(. | x_r) reparametrised and w_d^(r) = w_r if d = r, else
w~ ~ r_d(w) (reparametrised, so sigma_d learns). Sums run over present modalities.
The KL terms are single-sample Monte-Carlo estimates (the mixture density has no
closed form). Differences from the authors: Gaussian rather than Laplace posteriors
and priors (every method here shares the same Gaussian encoders), K = 1 (no IWAE or
DReG), and the auxiliary prior's mean fixed at 0 as in the paper. This is Palumbo et
al.'s objective (epalu/mmvaeplus ``m_elbo``), not the MMVM authors' own MMVAE+
(closed-form KLs, a learnt auxiliary mean; ``docs/protocol.md``).

Cross-modal generation (coherence, generation plots) decodes target t from source s
as both authors' codes do at test time: [z ~ q(z | x_s), w ~ p(w) = N(0, I)]
(epalu/mmvaeplus ``self_and_cross_modal_generation_forward``, thomassutter/mmvmvae
``MVSplitVAE.cond_generate_samples``), never the source's private w_s, which
describes x_s, not x_t; s = t decodes its own sample [z_s, w_s]. The code the
training's cross term decodes, [z_s, w~ ~ r_t(w)], is
``mmvm.aggregation.aggregate(..., aux_logstd=aux_logstds(model))``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmvm.model import present_rows, scatter_rows

_LOG_2PI = math.log(2 * math.pi)


def log_normal(x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(x; mu, diag exp(logvar)) summed over the last dimension."""
    return -0.5 * ((x - mu) ** 2 * torch.exp(-logvar) + logvar + _LOG_2PI).sum(-1)


def aux_logstds(model) -> Tensor:
    """[M, P] log standard deviations of the auxiliary priors r_m, rows in
    ``model.names`` order: r_m(w) = N(0, diag exp(2 aux_logstds[m]))."""
    return torch.stack([model.aux_logstd[name] for name in model.names])


def mmvaeplus_loss(model, x: dict[str, Tensor], mask: Tensor, mu: Tensor, logvar: Tensor,
                   beta: float, eps: Tensor, aux_eps: Tensor | None = None):
    """The MMVAE+ loss and its terms.

    mu, logvar, eps: [B, M, D + P]; mask bool [B, M]; aux_eps [B, M, M, P]: noise of
    the auxiliary prior for (source r, target d) (None: the prior's mean, 0).
    Returns ``(loss, rec_ll [B, M] self-reconstruction, reg [B], cross_ll [B, M, M])``.
    """
    B, M, C = mu.shape
    D = model.latent_dim
    P = C - D
    maskf = mask.to(mu.dtype)
    n = maskf.sum(1)  # [B] present modalities
    code = mu + torch.exp(0.5 * logvar) * eps  # [B, M, D + P] samples of each source
    z, w = code[..., :D], code[..., D:]
    if aux_eps is None:
        aux_eps = mu.new_zeros(B, M, M, P)
    ll = mu.new_zeros(B, M, M)  # [b, source r, target d]
    for d, name in enumerate(model.names):
        present_d = mask[:, d]
        if name not in x or not bool(present_d.any()):
            continue
        aux = aux_eps[:, :, d] * torch.exp(model.aux_logstd[name])  # [B, M, P]
        own = torch.zeros(M, dtype=torch.bool, device=mu.device)
        own[d] = True
        w_d = torch.where(own[None, :, None], w, aux)  # own private part on the diagonal
        codes = torch.cat([z, w_d], -1).reshape(B * M, C)
        x_d = x[name].unsqueeze(1).expand(B, M, *x[name].shape[1:]).reshape(
            B * M, *x[name].shape[1:])
        # only pairs with source and target present are decoded (mmvm.model: filler
        # rows never enter a network, nor its BatchNorm statistics)
        rows = present_rows((mask & present_d.unsqueeze(1)).reshape(B * M))
        if rows is None:
            ll_d = model.log_likelihood(name, x_d, model.decode(name, codes))
        else:
            ll_d = scatter_rows(model.log_likelihood(
                name, x_d[rows.to(x_d.device)], model.decode(name, codes[rows.to(codes.device)])),
                rows, B * M)
        ll[:, :, d] = ll_d.reshape(B, M)
    pair = mask.unsqueeze(2) & mask.unsqueeze(1)  # source and target present
    ll = torch.where(pair, ll, torch.zeros_like(ll))
    weights = model.likelihood_weights.to(ll)
    rec = (ll * weights).sum((1, 2)) / n  # [B]
    # log q(z_r | X): mixture of the present modalities' shared posteriors
    comp = log_normal(z.unsqueeze(2), mu[..., :D].unsqueeze(1), logvar[..., :D].unsqueeze(1))
    comp = comp.masked_fill(~mask.unsqueeze(1), float("-inf"))  # [B, r, m]
    log_mix = torch.logsumexp(comp, -1) - torch.log(n).unsqueeze(1)
    zeros = torch.zeros_like
    kl = (log_mix + log_normal(w, mu[..., D:], logvar[..., D:])
          - log_normal(z, zeros(z), zeros(z)) - log_normal(w, zeros(w), zeros(w)))
    reg = torch.where(mask, kl, zeros(kl)).sum(1) / n  # [B]
    loss = (-rec + beta * reg).mean()
    rec_ll = torch.diagonal(ll, dim1=1, dim2=2)  # [B, M] self-reconstructions
    return loss, rec_ll, reg, ll
