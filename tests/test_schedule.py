"""mmvm.schedule: the batch cut every trainer shares."""

from __future__ import annotations

import torch

from mmvm.schedule import epoch_batches, epoch_batches_grouped

SEED = 5


def test_a_last_batch_of_one_joins_the_batch_before():
    """BatchNorm (res_image) cannot train on one sample: n = k * batch + 1 never
    leaves a lone row; every row is still used exactly once."""
    batches = epoch_batches(33, 16, SEED, 0)
    assert [len(b) for b in batches] == [16, 17]
    assert sorted(torch.cat(batches).tolist()) == list(range(33))
    assert [len(b) for b in epoch_batches(34, 16, SEED, 0)] == [16, 16, 2]
    assert [len(b) for b in epoch_batches(1, 16, SEED, 0)] == [1]


def test_grouped_batches_cut_the_same_way():
    groups = [list(range(i, i + 11)) for i in range(0, 33, 11)]
    batches = epoch_batches_grouped(groups, 16, seed=SEED, epoch=0, window=2)
    assert [len(b) for b in batches] == [16, 17]


def test_batches_are_the_epochs_permutation_cut_at_batch_starts():
    """One tensor per epoch cut at batch_starts gives epoch_batches, also where a
    trailing batch of one row joins the one before."""
    import numpy as np

    from mmvm.schedule import batch_starts, epoch_permutation

    for n, bs in [(100, 10), (101, 10), (102, 10), (5, 8), (1, 1)]:
        perm = epoch_permutation(n, 4, 2)
        bounds = [*batch_starts(n, bs).tolist(), n]
        cut = [perm[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        got = epoch_batches(n, bs, 4, 2)
        assert len(cut) == len(got) and all(torch.equal(x, y) for x, y in zip(cut, got, strict=True))
        assert np.array_equal(np.sort(perm.numpy()), np.arange(n))
