"""The batch schedule: which rows form each batch of each epoch, from the seed alone.

Centralized training and the federated server share :func:`epoch_batches`, so both
visit the same samples in the same order (a precondition for their exact agreement).
It is the default (``data.schedule = "permutation"``) and the one every exactness test
and every federated run uses.

:func:`epoch_batches_grouped` (``data.schedule = "grouped"``) is a memory-saving option
for :class:`mmvm.data.streaming.StreamingDataset`: it shuffles whole Parquet row groups
and rows only within a window of a few groups, so each batch touches few row groups and
each group is read about once per epoch. It visits every row once per epoch like the
full permutation, but the batches differ, so a grouped run does not reproduce (and is
not compared against) a permutation run; federation always uses the full permutation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SCHEDULES = ("permutation", "grouped")


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Row indices of every batch of ``epoch``: a seeded permutation cut into batches.

    The last batch may be smaller; a last batch of one row joins the batch before it
    (BatchNorm cannot train on one sample, and a 1-in-``batch_size`` chance of that on
    real data is not a user's problem). Deterministic in (n, batch_size, seed, epoch).
    """
    if n <= 0 or batch_size <= 0:
        raise ValueError(f"need n > 0 and batch_size > 0, got n={n}, batch_size={batch_size}")
    return cut(epoch_permutation(n, seed, epoch), batch_size)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The rows of ``epoch`` in order; :func:`epoch_batches` cuts it at
    :func:`batch_starts` (one tensor instead of one per batch: a plan of batch 1
    over a million rows held a million tensors, ~650 bytes each)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def batch_starts(n: int, batch_size: int) -> np.ndarray:
    """Where each of an epoch's batches starts in :func:`epoch_permutation`; the
    last ends at ``n``."""
    return np.arange(batches_per_epoch(n, batch_size), dtype=np.int64) * batch_size


def batches_per_epoch(n: int, batch_size: int) -> int:
    """``len(epoch_batches(n, batch_size, ...))`` without drawing the permutation (a
    trailing batch of one row joins the one before it)."""
    count = -(-n // batch_size)
    last = n - (count - 1) * batch_size
    return count - (count > 1 and last == 1)


def cut(rows: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """``rows`` in batches of ``batch_size``; a trailing batch of one joins the one
    before it (when there is one)."""
    batches = list(rows.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def epoch_batches_grouped(groups: Sequence[Sequence[int] | np.ndarray | torch.Tensor],
                          batch_size: int, seed: int, epoch: int,
                          window: int = 4) -> list[torch.Tensor]:
    """Row indices of every batch of ``epoch``, shuffled locally to row groups.

    ``groups`` partitions the rows (``groups[k]``: the dataset rows stored in row
    group ``k``, e.g. ``StreamingDataset.row_groups()``). The order of the groups is a
    seeded permutation; consecutive runs of ``window`` groups (in that order) form a
    window whose rows are shuffled together; the concatenated windows are cut into
    batches of ``batch_size`` as :func:`epoch_batches` cuts them (the last may be
    smaller; one of a single row joins the batch before). A batch thus draws
    from consecutive windows only: two (at most ``2 * window`` row groups) when a
    window holds at least ``batch_size`` rows, and a row-group cache holding the groups
    of the windows one batch spans reads each group once per epoch.
    Deterministic in (groups, batch_size, seed, epoch, window).
    """
    sizes = [len(g) for g in groups]
    n = sum(sizes)
    if n <= 0 or batch_size <= 0 or window <= 0:
        raise ValueError(f"need rows > 0, batch_size > 0 and window > 0, got n={n}, "
                         f"batch_size={batch_size}, window={window}")
    g = torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919)
    tensors = [torch.as_tensor(np.asarray(x, dtype=np.int64)) for x in groups]
    order = torch.randperm(len(tensors), generator=g).tolist()
    parts = []
    for w in range(0, len(order), window):
        rows = torch.cat([tensors[k] for k in order[w:w + window]])
        parts.append(rows[torch.randperm(len(rows), generator=g)])
    return cut(torch.cat(parts), batch_size)
