"""The other sites' posteriors as a training step's input, and what to say of them
when that step cannot be taken."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from mmvm.federation.posteriors import Posteriors


def gather(others: Mapping[str, Posteriors], rows: np.ndarray, global_names: Sequence[str],
           names: Sequence[str], own_mask: Tensor, latent_dim: int
           ) -> tuple[Tensor, Tensor, Tensor]:
    """``(mask [n, M], mu [n, M, D], logvar [n, M, D])`` for the step's ``rows``: the
    own modalities' presence from ``own_mask`` (their values come from the site's own
    encoders), the others' from ``others``; absent entries are zero."""
    n, M = len(rows), len(global_names)
    mask = torch.zeros(n, M, dtype=torch.bool)
    mu, logvar = torch.zeros(n, M, latent_dim), torch.zeros(n, M, latent_dim)
    for g, m in enumerate(global_names):
        if m in names:
            mask[:, g] = own_mask[:, list(names).index(m)]
        elif m in others:
            found, pos = others[m].lookup(rows)
            have = torch.from_numpy(found)
            mu[have, g] = torch.from_numpy(others[m].mu[pos[found]])
            logvar[have, g] = torch.from_numpy(others[m].logvar[pos[found]])
            mask[have, g] = True
    return mask, mu, logvar


def ranges(others: Mapping[str, Posteriors], rows: np.ndarray) -> str:
    """The received values of the step's ``rows``, per modality, for an error message
    (a peer's extreme but admitted posteriors are the usual cause of a step that
    cannot be taken; the site's node config can narrow what it admits)."""
    parts = []
    for m, post in sorted(others.items()):
        found, pos = post.lookup(rows)
        if found.any():
            mu, lv = post.mu[pos[found]], post.logvar[pos[found]]
            parts.append(f"{m}: |mu| <= {np.abs(mu).max():.3g}, logvar in "
                         f"[{lv.min():.3g}, {lv.max():.3g}]")
    return ("; the other sites' posteriors of this step: " + "; ".join(parts)
            + " (narrow them with the node config's mu / logvar limits)") if parts else ""
