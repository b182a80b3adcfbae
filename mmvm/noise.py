"""Reparametrisation noise as a pure function of (seed, step, modality).

Centralized and federated training must draw the same eps for the same sample and
step, although in a federation each modality's noise is drawn at a different site.
So the noise of modality m at optimiser step t comes from its own generator seeded
by (seed, t, m), independent of which process draws it.
"""

from __future__ import annotations

import torch
from torch import Tensor

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads consecutive seeds apart


def _stream_seed(seed: int, step: int, modality: int) -> int:
    return (seed * 1_000_003 + step * 7919 + modality + 1) * _MIX % (2**63 - 1)


def modality_noise(seed: int, step: int, modality: int, batch: int, dim: int) -> Tensor:
    """eps ~ N(0, I) of shape [batch, dim] for modality index ``modality`` at ``step``."""
    g = torch.Generator().manual_seed(_stream_seed(seed, step, modality))
    return torch.randn(batch, dim, generator=g)


def step_noise(seed: int, step: int, batch: int, n_modalities: int, dim: int) -> Tensor:
    """eps [batch, M, dim] for all modalities at one step (the centralized view)."""
    return torch.stack(
        [modality_noise(seed, step, m, batch, dim) for m in range(n_modalities)], dim=1
    )


def aux_noise(seed: int, step: int, batch: int, n_modalities: int, dim: int) -> Tensor:
    """eps [batch, M (source), M (target), dim] for MMVAE+'s auxiliary priors at
    ``step``: streams after the modalities' own (indices M, M + 1, ...)."""
    M = n_modalities
    return torch.stack([torch.stack([modality_noise(seed, step, M + r * M + d, batch, dim)
                                     for d in range(M)], 1) for r in range(M)], 1)
