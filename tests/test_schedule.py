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
