"""Missing-modality imputation: how well a model fills in a modality it did not see.

For a test sample that holds modality t and at least one other, t is left out, the
sample is encoded from what remains, and t is decoded from that latent; the score is
the likelihood term of the loss on the real x_t, NLL = -w_t log p(x_t | z). The
latent is the mean of each method's own distribution of z given the rest, a point
imputation (``sample=True``: one seeded draw from it instead, which a sharp decoder
pays for: on PolyMNIST a drawn background is worse than the average one):

- AVG and PoE: the joint posterior of the present subset;
- MMVM and independent VAEs: the mixture of the present unimodal posteriors (the
  h(z | X) of the objective without x_t), as MoE: the mean of their means (a draw:
  one component per sample, by MoE's slice rule);
- MoPoE: the mixture of the PoEs of every subset of the present modalities;
- MMVAE+: the present modalities' shared parts so, with t's private part at the
  prior's mean 0 (a draw: N(0, I)).

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

from mmvm.aggregation import (
    aggregate,
    can_federate,
    has_private_latent,
    product_of_experts,
    select_present,
    subsets,
)
from mmvm.model import MultimodalVAE


def imputing_latent(method: str, mu: Tensor, logvar: Tensor, sources: Tensor,
                    target: int, eps: Tensor | None = None, private_dim: int = 0
                    ) -> Tensor:
    """The latent [B, D] modality ``target`` is decoded from when only ``sources``
    (bool [B, M], at least one per row, ``target`` not among them) are seen: the mean
    of the method's distribution of z given them, or with ``eps`` [B, M, D] a draw."""
    if eps is None:
        return _mean_latent(method, mu, logvar, sources, private_dim)
    z, _ = aggregate(method, mu, logvar, sources, eps, 0.0, private_dim)
    if can_federate(method):  # unimodal latents: a draw from the sources' mixture
        k = select_present(sources, sources)
        return z[torch.arange(z.shape[0], device=z.device), k]
    return z[:, target]  # joint methods: the one z; MMVAE+: target's slot


def _mean_latent(method: str, mu: Tensor, logvar: Tensor, sources: Tensor,
                 private_dim: int) -> Tensor:
    w = sources.to(mu.dtype).unsqueeze(-1)
    if method in ("avg", "poe"):  # the joint posterior's mean
        z, _ = aggregate(method, mu, logvar, sources, torch.zeros_like(mu), 0.0)
        return z[:, 0]
    if method == "mopoe":  # mixture over the subsets of the sources: mean of PoE means
        subs = subsets(mu.shape[1]).to(mu.device)  # [S, M]
        usable = ~(subs.unsqueeze(0) & ~sources.unsqueeze(1)).any(-1)  # [B, S]
        means = torch.stack([product_of_experts(mu, logvar, s.expand_as(sources))[0]
                             for s in subs], 1)  # [B, S, D]; unusable ones masked below
        u = usable.unsqueeze(-1)
        return torch.where(u, means, 0.0).sum(1) / u.sum(1)
    z = (mu * w).sum(1) / w.sum(1)  # a mixture of the sources' posteriors: its mean
    if has_private_latent(method):  # MMVAE+: shared parts so, the private at 0
        z[:, z.shape[1] - private_dim:] = 0.0
    return z


@torch.no_grad()
def imputation_nll(model: MultimodalVAE, dataset, method: str, batch_size: int = 256,
                   seed: int = 0, sample: bool = False) -> dict[str, Any]:
    """Mean weighted test NLL of each modality imputed from the others.

    Returns ``{"rest": {t: NLL of t from all others}, "pairs": {"s->t": NLL of t
    from s}, "names", "matrix": rows source, columns target (NaN on the diagonal and
    where no sample holds both), "n": {t: samples t was imputed for}, "mean": mean
    of ``rest`` over the modalities that have it, "total": its sum, which reads as
    the reconstruction's total does where every sample holds every modality}``. A sample counts for t when it
    holds t and another modality. Empty dicts where no sample holds two. ``sample``:
    one seeded draw of the latent per imputation instead of its mean."""
    device = next(model.parameters()).device
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    names, M, D = model.names, len(model.names), model.code_dim
    w = model.likelihood_weights
    pair_sum = torch.zeros(M, M, dtype=torch.float64)
    pair_n = torch.zeros(M, M, dtype=torch.float64)
    rest_sum = torch.zeros(M, dtype=torch.float64)
    rest_n = torch.zeros(M, dtype=torch.float64)
    for start in range(0, len(dataset), batch_size):
        b = dataset.batch(torch.arange(start, min(start + batch_size, len(dataset))))
        x = {k: v.to(device) for k, v in b["x"].items()}
        mask = b["mask"].to(device)
        mu, lv = model.encode(x, mask)
        eps = torch.randn(mask.shape[0], M, D, generator=gen).to(device) if sample \
            else None
        for t, name in enumerate(names):
            holds = mask[:, t] & (mask.sum(1) > 1)
            if not bool(holds.any()):
                continue
            rows = holds.nonzero().squeeze(1)
            sub = mask[rows].clone()
            sub[:, t] = False
            nll = _nll(model, method, name, x[name][rows], mu[rows], lv[rows], sub, t,
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
                           lv[rows][both], one, t, _rows(_rows(eps, rows), both),
                           float(w[t]))
                pair_sum[s, t] += float(nll.sum())
                pair_n[s, t] += int(both.sum())
    if M == 2:  # the rest of t is the other modality
        for t in range(2):
            pair_sum[1 - t, t], pair_n[1 - t, t] = rest_sum[t], rest_n[t]
    return _summary(names, pair_sum, pair_n, rest_sum, rest_n)


def _rows(eps: Tensor | None, rows: Tensor) -> Tensor | None:
    return None if eps is None else eps[rows]


def _nll(model: MultimodalVAE, method: str, name: str, x_t: Tensor, mu: Tensor,
         lv: Tensor, sources: Tensor, t: int, eps: Tensor | None, weight: float) -> Tensor:
    z = imputing_latent(method, mu, lv, sources, t, eps, model.private_dim)
    return -weight * model.log_likelihood(name, x_t, model.decode(name, z))


def _summary(names: list[str], pair_sum: Tensor, pair_n: Tensor, rest_sum: Tensor,
             rest_n: Tensor) -> dict[str, Any]:
    def mean(total: Tensor, n: Tensor) -> float:
        return float(total / n) if n > 0 else math.nan

    rest = {m: mean(rest_sum[t], rest_n[t]) for t, m in enumerate(names) if rest_n[t] > 0}
    pairs = {f"{s}->{t}": mean(pair_sum[i, j], pair_n[i, j])
             for i, s in enumerate(names) for j, t in enumerate(names)
             if i != j and pair_n[i, j] > 0}
    matrix = [[pairs.get(f"{s}->{t}", math.nan) for t in names] for s in names]
    return {"rest": rest, "pairs": pairs, "names": list(names), "matrix": matrix,
            "n": {m: int(rest_n[t]) for t, m in enumerate(names) if rest_n[t] > 0},
            "mean": sum(rest.values()) / len(rest) if rest else math.nan,
            "total": sum(rest.values()) if rest else math.nan}
