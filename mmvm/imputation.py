"""Missing-modality imputation: how well a model fills in a modality it did not see.

For a test sample that holds modality t and at least one other, t is left out, the
sample is encoded from what remains, and t is decoded from each method's own
distribution of z given the rest; the score is the likelihood term of the loss on the
real x_t, NLL = -w_t log p(x_t | z). As the reconstruction beside it, z is one seeded
draw (``sample=False``: the distribution's mean, or each component's):

- AVG and PoE: the joint posterior of the present subset;
- MoPoE: the PoE of exactly the present subset (the authors' conditional generation
  decodes ``latents['subsets'][A]``);
- MMVM, independent VAEs and MoE: the mixture of the present unimodal posteriors (for
  MMVM the h(z | X) of the objective without x_t). t is decoded from a draw of every
  component and scored by the mean of their NLLs, -w_t (1/K) sum_k log p(x_t | z_k):
  the expected score of one draw from the mixture (its component chosen at random),
  as a joint method is scored on one draw. Not at the mean of the component means, a
  point none of them decodes (two mirrored components average to the origin);
- MMVAE+: the same mixture of the present modalities' shared parts, t's private part
  drawn from N(0, I) (its mean 0), as coherence decodes it.

Two readings:

- **from the rest** (``rest``): t from all the sample's other modalities;
- **pairs** (``s->t``): t from s alone, as coherence decodes it (for two modalities
  the two readings coincide, and ``rest`` is the pair).

Read it between two bounds: the constant image's NLL (no information about the
sample, :mod:`mmvm.recon_baseline`) and t's own reconstruction NLL (all of it). Where
the modalities share only a label (PolyMNIST), the best imputation is the class's
average image; where they see the same object (a study's frontal and lateral X-ray,
the same trial in several rats), it can come close to the reconstruction.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mmvm.aggregation import aggregate, has_private_latent, reparameterize, subset_rule
from mmvm.model import MultimodalVAE

# how an imputation is scored, in eval.json: an evaluation scored otherwise (the mean
# latent, a mixture's likelihood; before 2026-12-05) is redone by ``mmvm compare``
SCORING = "one draw; mixtures: mean NLL over components; MoPoE: subset PoE"


def imputing_latents(method: str, mu: Tensor, logvar: Tensor, sources: Tensor,
                     eps: Tensor | None = None, private_dim: int = 0) -> Tensor:
    """The latents [B, K, D] modality t is decoded from when only ``sources`` (bool
    [B, M], at least one per row, t not among them) are seen, with ``eps`` [B, M, D]
    draws of them (None: means). Joint methods (AVG, PoE, MoPoE): K = 1, the subset's
    joint posterior. Mixture methods (MMVM, independent, MoE, MMVAE+): K = M, one per
    unimodal posterior; the rows of absent sources are to be left out of the mixture
    (:func:`imputation_ll`)."""
    fuse = subset_rule(method)  # MoPoE: the PoE of the subset
    if fuse is not None:
        z, _ = aggregate(fuse, mu, logvar, sources,
                         torch.zeros_like(mu) if eps is None else eps, 0.0)
        return z[:, :1]
    z = mu if eps is None else reparameterize(mu, logvar, eps)
    if has_private_latent(method):  # t's private part from N(0, I): its draw, or 0
        z = z.clone()
        D = z.shape[-1] - private_dim
        z[..., D:] = 0.0 if eps is None else eps[..., D:]
    return z


def imputation_ll(model: MultimodalVAE, name: str, x_t: Tensor, z: Tensor,
                  sources: Tensor) -> Tensor:
    """log p(x_t | z) per sample [B] for the latents ``z`` [B, K, D] of
    :func:`imputing_latents`: decoded once (K = 1), or for a mixture the mean over
    its present components of log p(x_t | z_k): the expected score of one draw from
    the mixture, its component drawn at random, without that choice's noise. (The
    mixture's likelihood, log of the mean of p(x_t | z_k), would score K draws
    against a joint method's one: more draws inside a log always score better.)"""
    if z.shape[1] == 1:
        return model.log_likelihood(name, x_t, model.decode(name, z[:, 0]))
    total = x_t.new_zeros(x_t.shape[0], dtype=torch.float32)
    for k in range(z.shape[1]):  # only the rows that hold source k are decoded
        rows = sources[:, k]
        if bool(rows.any()):
            total[rows] += model.log_likelihood(name, x_t[rows],
                                                model.decode(name, z[rows, k])).float()
    return total / sources.sum(1).to(total.dtype)


@torch.no_grad()
def imputed_mean(model: MultimodalVAE, method: str, name: str, mu: Tensor,
                 logvar: Tensor, sources: Tensor) -> Tensor:
    """The picture of x_``name`` given ``sources``: the decoded mean at the joint
    posterior's mean (AVG, PoE, MoPoE), or the mean of the mixture's components'
    decoded means over the present sources (MMVM, independent, MoE, MMVAE+); for
    outputs that are not numbers to average (token ids) the first present source's."""
    z = imputing_latents(method, mu, logvar, sources, None, model.private_dim)
    out = torch.stack([model.generate(name, z[:, k]) for k in range(z.shape[1])], 1)
    if z.shape[1] == 1:
        return out[:, 0]
    if not out.is_floating_point():
        return out[torch.arange(out.shape[0], device=out.device), sources.int().argmax(1)]
    w = sources.to(out.dtype).reshape(*sources.shape, *[1] * (out.dim() - 2))
    return (out * w).sum(1) / w.sum(1)


@torch.no_grad()
def imputation_nll(model: MultimodalVAE, dataset, method: str, batch_size: int = 256,
                   seed: int = 0, sample: bool = True, draws: int = 1) -> dict[str, Any]:
    """Mean weighted test NLL of each modality imputed from the others.

    Returns ``{"rest": {t: NLL of t from all others}, "pairs": {"s->t": NLL of t
    from s}, "names", "matrix": rows source, columns target (NaN on the diagonal and
    where no sample holds both), "n": {t: samples t was imputed for}, "samples":
    samples that hold two modalities or more, "mean": mean of ``rest`` over the
    modalities that have it, "total": the mean over those samples of the sum over
    their modalities, as the reconstruction's total is}``. A sample counts for t when
    it holds t and another modality. Empty dicts where no sample holds two.
    ``sample``: one seeded draw of the latents per imputation, as the reconstruction
    decodes (False: their means). ``draws`` > 1: the predictive log-likelihood
    instead, -w_t log (1/S) sum_s p(x_t | z_s) over S draws of each method's
    distribution given the rest (a mixture's: a component drawn at random, then z
    from it), the same S for every method; it rises towards log p(x_t | rest) as S
    grows, and credits a mixture whose components cover the truth between them."""
    if draws < 1 or (draws > 1 and not sample):
        raise ValueError(f"draws = {draws}: one or more, and more than one only with "
                         f"sample = True")
    device = next(model.parameters()).device
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    names, M, D = model.names, len(model.names), model.code_dim
    w = model.likelihood_weights
    pair_sum = torch.zeros(M, M, dtype=torch.float64)
    pair_n = torch.zeros(M, M, dtype=torch.float64)
    rest_sum = torch.zeros(M, dtype=torch.float64)
    rest_n = torch.zeros(M, dtype=torch.float64)
    samples = 0
    for start in range(0, len(dataset), batch_size):
        b = dataset.batch(torch.arange(start, min(start + batch_size, len(dataset))))
        x = {k: v.to(device) for k, v in b["x"].items()}
        mask = b["mask"].to(device)
        mu, lv = model.encode(x, mask)
        eps = None  # the means
        if sample and draws == 1:  # one draw per component
            eps = torch.randn(mask.shape[0], M, D, generator=gen).to(device)
        elif sample:  # (noise, component picks) of each of the draws
            eps = (torch.randn(mask.shape[0], draws, M, D, generator=gen).to(device),
                   torch.rand(mask.shape[0], draws, generator=gen).to(device))
        samples += int((mask.sum(1) > 1).sum())
        for t, name in enumerate(names):
            holds = mask[:, t] & (mask.sum(1) > 1)
            if not bool(holds.any()):
                continue
            rows = holds.nonzero().squeeze(1)
            sub = mask[rows].clone()
            sub[:, t] = False
            nll = _nll(model, method, name, x[name][rows], mu[rows], lv[rows], sub,
                       _rows(eps, rows), float(w[t]))
            rest_sum[t] += float(nll.sum())
            rest_n[t] += len(rows)
            for s in range(M):
                both = sub[:, s]
                if s == t or not bool(both.any()) or M == 2:
                    continue
                one = torch.zeros_like(sub[both])
                one[:, s] = True
                nll = _nll(model, method, name, x[name][rows][both], mu[rows][both],
                           lv[rows][both], one, _rows(_rows(eps, rows), both),
                           float(w[t]))
                pair_sum[s, t] += float(nll.sum())
                pair_n[s, t] += int(both.sum())
    if M == 2:  # the rest of t is the other modality
        for t in range(2):
            pair_sum[1 - t, t], pair_n[1 - t, t] = rest_sum[t], rest_n[t]
    return {**_summary(names, pair_sum, pair_n, rest_sum, rest_n, samples),
            "scoring": scoring(sample, draws)}


def scoring(sample: bool = True, draws: int = 1) -> str:
    """What eval.json's ``imputation.scoring`` says for these settings."""
    if not sample:
        return f"{SCORING}; the means, not draws"
    return SCORING if draws == 1 else f"{SCORING}; predictive over {draws} draws"


def _rows(eps, rows: Tensor):
    if eps is None:
        return None
    return eps[rows] if isinstance(eps, Tensor) else tuple(e[rows] for e in eps)


def _nll(model: MultimodalVAE, method: str, name: str, x_t: Tensor, mu: Tensor,
         lv: Tensor, sources: Tensor, eps, weight: float) -> Tensor:
    if isinstance(eps, tuple):  # (noise [B, S, M, D], component picks [B, S])
        return -weight * _predictive_ll(model, method, name, x_t, mu, lv, sources, *eps)
    z = imputing_latents(method, mu, lv, sources, eps, model.private_dim)
    return -weight * imputation_ll(model, name, x_t, z, sources)


def _predictive_ll(model: MultimodalVAE, method: str, name: str, x_t: Tensor,
                   mu: Tensor, lv: Tensor, sources: Tensor, eps: Tensor,
                   u: Tensor) -> Tensor:
    """log (1/S) sum_s p(x_t | z_s) [B]: z_s from the method's distribution given
    ``sources``, a mixture's component chosen by ``u`` (uniform in [0, 1): the
    floor(u K)-th present source)."""
    rows = torch.arange(x_t.shape[0], device=x_t.device)
    count = sources.sum(1)
    lls = []
    for s in range(eps.shape[1]):
        z = imputing_latents(method, mu, lv, sources, eps[:, s], model.private_dim)
        if z.shape[1] > 1:
            j = (u[:, s] * count).long().clamp(max=count - 1)  # the j-th present one
            k = (sources.long().cumsum(1) <= j.unsqueeze(1)).sum(1)
            z = z[rows, k].unsqueeze(1)
        lls.append(model.log_likelihood(name, x_t, model.decode(name, z[:, 0])).float())
    return torch.logsumexp(torch.stack(lls), 0) - math.log(len(lls))


def _summary(names: list[str], pair_sum: Tensor, pair_n: Tensor, rest_sum: Tensor,
             rest_n: Tensor, samples: int) -> dict[str, Any]:
    def mean(total: Tensor, n: Tensor) -> float:
        return float(total / n) if n > 0 else math.nan

    rest = {m: mean(rest_sum[t], rest_n[t]) for t, m in enumerate(names) if rest_n[t] > 0}
    pairs = {f"{s}->{t}": mean(pair_sum[i, j], pair_n[i, j])
             for i, s in enumerate(names) for j, t in enumerate(names)
             if i != j and pair_n[i, j] > 0}
    matrix = [[pairs.get(f"{s}->{t}", math.nan) for t in names] for s in names]
    return {"rest": rest, "pairs": pairs, "names": list(names), "matrix": matrix,
            "n": {m: int(rest_n[t]) for t, m in enumerate(names) if rest_n[t] > 0},
            "samples": samples,
            "mean": sum(rest.values()) / len(rest) if rest else math.nan,
            "total": float(rest_sum.sum()) / samples if samples else math.nan}
