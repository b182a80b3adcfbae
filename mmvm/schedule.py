"""The batch schedule: which rows form each batch of each epoch, from the seed alone.

Centralized training and the federated server share this function, so both visit the
same samples in the same order (a precondition for their exact agreement).
"""

from __future__ import annotations

import torch


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Row indices of every batch of ``epoch``: a seeded permutation cut into batches.

    The last batch may be smaller. Deterministic in (n, batch_size, seed, epoch).
    """
    if n <= 0 or batch_size <= 0:
        raise ValueError(f"need n > 0 and batch_size > 0, got n={n}, batch_size={batch_size}")
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return list(perm.split(batch_size))
