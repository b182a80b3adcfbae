"""Methods as one registry: how unimodal posteriors become the latents decoders read.

Every method is a function ``(mu, logvar, mask, eps, alpha) -> (z, reg)`` with
mu, logvar, eps of shape [B, M, D], mask bool [B, M]; it returns z [B, M, D] (the
latent modality m's decoder reads) and the per-sample regulariser reg [B]. All
methods share encoders and decoders; only this function differs (reference note,
section 2). Aggregated methods decode every modality from one joint z.

| method      | latent of modality m                 | regulariser                      |
|-------------|--------------------------------------|----------------------------------|
| independent | z_m ~ q_m                            | sum_m KL(q_m || N(0,I))          |
| mmvm        | z_m ~ q_m                            | mmvm_regularizer (mixture prior) |
| avg         | z ~ N(mean mu_m, mean var_m)         | M KL(q_avg || N(0,I))            |
| poe         | z ~ prod_m q_m (no prior expert)     | M KL(q_poe || N(0,I))            |
| moe         | z ~ q_k, one k per sample            | M KL(q_k || N(0,I))              |
| mopoe       | z ~ PoE(q_S), one subset S per sample| M KL(q_S || N(0,I))              |
| mmvaeplus   | [shared z of a present modality, own private w or w ~ N(0,I)] | see below |

Only the unimodal methods (``register(..., federated=True)``) train across sites that
each hold some modalities: their objective couples modalities only through the
per-sample (mu, logvar), so exchanging those gives the centralized gradient exactly.
The aggregated methods decode every modality from a joint z and are centralized only.

MMVAE+ (Palumbo et al., ICLR 2023) splits each code into a shared part (``latent_dim``)
and a modality-specific one (``private_dim``, passed as ``private_dim=``: use
:func:`aggregate`). Its registered function gives the latents decoders read outside
training; its training objective has cross-reconstructions and a Monte-Carlo mixture
KL and lives in :mod:`mmvm.mmvaeplus`.
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch
from torch import Tensor

from mmvm.divergences import check_posteriors, kl_standard_normal, mmvm_regularizer

Method = Callable[..., tuple[Tensor, Tensor]]
_METHODS: dict[str, Method] = {}
_FEDERATED: set[str] = set()
_SPLIT: set[str] = set()  # methods whose codes are [shared, private] (private_dim > 0)
_SUBSET: dict[str, str] = {}  # joint methods: the rule that fuses a subset of modalities


def register(name: str, *, federated: bool = False, split: bool = False,
             subset: str | None = None) -> Callable[[Method], Method]:
    """Decorator adding a method to the registry under ``name``.

    Parameters
    ----------
    name : the method's name in configs and on the command line.
    federated : whether the method can train across sites that each hold some
        modalities: true when its objective couples modalities only through the
        per-sample posterior parameters (mu, logvar), which sites can exchange.
    split : whether the method's codes carry a modality-specific part (it then
        takes ``private_dim=``).
    subset : for a joint method (one latent of the modalities seen), the registered
        rule whose posterior of a subset of them imputes the others (MoPoE: "poe");
        None for a mixture of unimodal posteriors.
    """

    def add(fn: Method) -> Method:
        _METHODS[name] = fn
        (_SPLIT.add if split else _SPLIT.discard)(name)
        if subset is not None:
            _SUBSET[name] = subset
        else:
            _SUBSET.pop(name, None)
        if federated:
            _FEDERATED.add(name)
        else:
            _FEDERATED.discard(name)
        return fn

    return add


def get_method(name: str) -> Method:
    """The registered method called ``name``; the error lists the valid names."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {available_methods()}") from None


def available_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_METHODS)


def federated_methods() -> list[str]:
    """Names of the registered methods that can train federated, sorted."""
    return sorted(_FEDERATED)


def can_federate(name: str) -> bool:
    """Whether method ``name`` can train federated; unknown names raise ValueError."""
    get_method(name)
    return name in _FEDERATED


def aggregate(name: str, mu: Tensor, logvar: Tensor, mask: Tensor, eps: Tensor,
              alpha: float = 0.0, private_dim: int = 0, aux_logstd: Tensor | None = None
              ) -> tuple[Tensor, Tensor]:
    """``get_method(name)`` applied; ``private_dim`` and ``aux_logstd`` (the [M, P]
    log standard deviations of MMVAE+'s auxiliary priors r_m) only for methods that
    split codes."""
    fn = get_method(name)
    if name in _SPLIT:
        return fn(mu, logvar, mask, eps, alpha, private_dim=private_dim, aux_logstd=aux_logstd)
    if private_dim or aux_logstd is not None:
        raise ValueError(f"method {name!r} has no modality-specific latent "
                         f"(private_dim = {private_dim})")
    return fn(mu, logvar, mask, eps, alpha)


def subset_rule(name: str) -> str | None:
    """The rule fusing a subset of modalities for joint method ``name`` (its
    imputations decode that subset's posterior), or None for a mixture method;
    unknown names raise."""
    get_method(name)
    return _SUBSET.get(name)


def has_private_latent(name: str) -> bool:
    """Whether method ``name``'s codes carry a modality-specific part (MMVAE+): its
    modalities then decode different latents from one source; unknown names raise."""
    get_method(name)
    return name in _SPLIT


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """z = mu + sigma * eps, sigma = exp(logvar / 2)."""
    return mu + torch.exp(0.5 * logvar) * eps


# ------------------------------------------------------------------ unimodal methods
@register("independent", federated=True)
def independent(mu: Tensor, logvar: Tensor, mask: Tensor, eps: Tensor, alpha: float = 1.0):
    mask = check_posteriors(mu, logvar, mask)
    kl = torch.where(mask, kl_standard_normal(mu, logvar), torch.zeros_like(mu[..., 0]))
    return reparameterize(mu, logvar, eps), kl.sum(1)


@register("mmvm", federated=True)
def mmvm(mu: Tensor, logvar: Tensor, mask: Tensor, eps: Tensor, alpha: float = 0.0):
    return reparameterize(mu, logvar, eps), mmvm_regularizer(mu, logvar, alpha, mask)


# ------------------------------------------------------------------ joint posteriors
def average(mu: Tensor, logvar: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """AVG: mean of the present means and of the present variances. [B, D] each."""
    w = mask.to(mu.dtype).unsqueeze(-1)
    n = w.sum(1)
    mu_avg = (mu * w).sum(1) / n
    var_avg = (torch.exp(logvar) * w).sum(1) / n
    return mu_avg, torch.log(var_avg)


def product_of_experts(mu: Tensor, logvar: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """PoE without a prior expert: 1/var = sum_m 1/var_m, mu = var sum_m mu_m / var_m."""
    w = mask.to(mu.dtype).unsqueeze(-1)
    precision = torch.exp(-logvar) * w
    total = precision.sum(1)
    mu_poe = (mu * precision).sum(1) / total
    return mu_poe, -torch.log(total)


def slice_selection(batch_size: int, n_choices: int, device=None) -> Tensor:
    """The reference's MoE selection (``mixture_component_selection`` of
    thomassutter/mmvmvae and MoPoE): slices of ``batch_size // n_choices`` rows in
    order, the last slice taking the remainder (all rows when the batch is smaller
    than ``n_choices``)."""
    rows = torch.arange(batch_size, device=device)
    size = batch_size // n_choices
    if size == 0:
        return torch.full_like(rows, n_choices - 1)
    return torch.clamp(rows // size, max=n_choices - 1)


def _joint(z_joint: Tensor, mu_j: Tensor, lv_j: Tensor, mask: Tensor, M: int):
    n_present = mask.sum(1).to(mu_j.dtype)
    reg = n_present * kl_standard_normal(mu_j, lv_j)
    return z_joint.unsqueeze(1).expand(-1, M, -1), reg


@register("avg", subset="avg")
def avg(mu: Tensor, logvar: Tensor, mask: Tensor, eps: Tensor, alpha: float = 0.0):
    mask = check_posteriors(mu, logvar, mask)
    mu_j, lv_j = average(mu, logvar, mask)
    return _joint(reparameterize(mu_j, lv_j, eps[:, 0]), mu_j, lv_j, mask, mu.shape[1])


@register("poe", subset="poe")
def poe(mu: Tensor, logvar: Tensor, mask: Tensor, eps: Tensor, alpha: float = 0.0):
    mask = check_posteriors(mu, logvar, mask)
    mu_j, lv_j = product_of_experts(mu, logvar, mask)
    return _joint(reparameterize(mu_j, lv_j, eps[:, 0]), mu_j, lv_j, mask, mu.shape[1])


def select_present(mask: Tensor, candidates: Tensor) -> Tensor:
    """Per sample, pick among the valid candidates by the slice rule. -> index [B].

    candidates: bool [B, K], which of K components a sample may use. Sample b in
    slice s takes the (s mod n_valid_b)-th valid candidate, so with everything
    present this is exactly the reference's slices.
    """
    B, K = candidates.shape
    slot = slice_selection(B, K, candidates.device)
    n_valid = candidates.sum(1)
    rank = slot % n_valid  # which valid candidate
    order = torch.cumsum(candidates.long(), dim=1) - 1  # rank of each valid candidate
    hit = candidates & (order == rank.unsqueeze(1))
    return hit.long().argmax(1)


@register("moe")
def moe(mu: Tensor, logvar: Tensor, mask: Tensor, eps: Tensor, alpha: float = 0.0):
    mask = check_posteriors(mu, logvar, mask)
    k = select_present(mask, mask)
    rows = torch.arange(mu.shape[0], device=mu.device)
    mu_j, lv_j = mu[rows, k], logvar[rows, k]
    return _joint(reparameterize(mu_j, lv_j, eps[:, 0]), mu_j, lv_j, mask, mu.shape[1])


def subsets(M: int) -> Tensor:
    """All 2^M - 1 non-empty subsets as a bool matrix [S, M], smallest first."""
    rows = [
        [m in combo for m in range(M)]
        for size in range(1, M + 1)
        for combo in itertools.combinations(range(M), size)
    ]
    return torch.tensor(rows, dtype=torch.bool)


@register("mopoe", subset="poe")
def mopoe(mu: Tensor, logvar: Tensor, mask: Tensor, eps: Tensor, alpha: float = 0.0):
    mask = check_posteriors(mu, logvar, mask)
    B, M, D = mu.shape
    subs = subsets(M).to(mu.device)  # [S, M]
    # a subset is usable when all its modalities are present
    usable = (subs.unsqueeze(0) & ~mask.unsqueeze(1)).sum(-1) == 0  # [B, S]
    s = select_present(mask, usable)
    sub_mask = subs[s]  # [B, M]
    mu_j, lv_j = product_of_experts(mu, logvar, sub_mask)
    return _joint(reparameterize(mu_j, lv_j, eps[:, 0]), mu_j, lv_j, mask, M)


# ------------------------------------------------------------------ MMVAE+
@register("mmvaeplus", split=True)
def mmvaeplus(mu: Tensor, logvar: Tensor, mask: Tensor, eps: Tensor, alpha: float = 0.0,
              private_dim: int = 0, aux_logstd: Tensor | None = None):
    """The latents MMVAE+ decoders read outside training: a present modality decodes
    its own sample [z_m, w_m]; an absent one m decodes the shared z of a present
    modality (the slice rule) with its private w drawn from its auxiliary prior
    r_m(w) = N(0, diag exp(2 aux_logstd[m])), w = exp(aux_logstd[m]) * eps[..., D:]
    (zero noise gives the prior mean 0): the code the objective's cross-reconstruction
    of m decodes (:func:`mmvm.mmvaeplus.mmvaeplus_loss`). ``aux_logstd`` [M, P] None:
    w ~ p(w) = N(0, I). reg: the closed-form KLs of the present posteriors (shared and
    private) to N(0, I), a diagnostic; training uses the objective."""
    mask = check_posteriors(mu, logvar, mask)
    if not 0 < private_dim < mu.shape[-1]:
        raise ValueError(f"mmvaeplus needs 0 < private_dim < {mu.shape[-1]}, got {private_dim}")
    D = mu.shape[-1] - private_dim
    prior_w = eps[..., D:]  # [B, M, P]
    if aux_logstd is not None:
        if tuple(aux_logstd.shape) != (mu.shape[1], private_dim):
            raise ValueError(f"aux_logstd must be [M, P] = [{mu.shape[1]}, {private_dim}], "
                             f"got {list(aux_logstd.shape)}")
        prior_w = prior_w * torch.exp(aux_logstd).to(prior_w)
    z = reparameterize(mu, logvar, eps)  # [B, M, D + P]
    source = select_present(mask, mask)  # [B]
    shared = z[torch.arange(z.shape[0], device=z.device), source, :D]  # [B, D]
    keep = mask.unsqueeze(-1)
    out = torch.cat([torch.where(keep, z[..., :D], shared.unsqueeze(1).expand_as(z[..., :D])),
                     torch.where(keep, z[..., D:], prior_w)], -1)
    kl = torch.where(mask, kl_standard_normal(mu, logvar), torch.zeros_like(mu[..., 0]))
    return out, kl.sum(1)
