"""Reproducible uniform subsets: a class-sorted id order must not decide which
classes a "first N" probe or a quick run sees."""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.subsample import keep_ids, keep_rows

# 10 classes of 1,000 ids each, in class order (as CUB's or a registry's files)
IDS = [f"class{c:02d}-{i:04d}" for c in range(10) for i in range(1000)]


def test_kept_ids_are_a_uniform_sample_whatever_the_id_order():
    kept = keep_ids(IDS, 2000)
    assert len(kept) == 2000 and kept == [s for s in IDS if s in set(kept)]  # order kept
    counts = np.bincount([int(s[5:7]) for s in kept], minlength=10)
    # each class is Binomial-like around 200: a chi-square over 9 degrees of freedom,
    # far below its 0.1% critical value 27.9 (the first 2000 ids: 8000)
    chi2 = ((counts - 200) ** 2 / 200).sum()
    assert chi2 < 27.9, counts
    assert keep_ids(IDS[::-1], 2000) == kept[::-1]  # the ids decide, not their order


def test_kept_ids_are_nested_and_all_or_none_at_the_edges():
    small, large = keep_ids(IDS, 100), keep_ids(IDS, 101)
    assert set(small) < set(large)
    assert keep_ids(IDS, 0) == IDS and keep_ids(IDS, 10**6) == IDS
    # a site with part of the ids keeps exactly the federation's choice among them
    part = IDS[:5000]
    assert set(keep_ids(IDS, 3000)) & set(part) == set(keep_ids(part, len(
        set(keep_ids(IDS, 3000)) & set(part))))


@pytest.mark.parametrize("n,limit", [(10, 0), (10, 10), (10, 30)])
def test_keep_rows_keeps_all_without_a_smaller_limit(n, limit):
    assert np.array_equal(keep_rows(n, limit), np.arange(n))


def test_keep_rows_is_a_seeded_uniform_draw_without_replacement():
    rows = keep_rows(10_000, 2000)
    assert len(np.unique(rows)) == 2000 and (np.diff(rows) > 0).all()
    assert np.array_equal(rows, keep_rows(10_000, 2000))
    counts = np.bincount(rows // 1000, minlength=10)
    assert ((counts - 200) ** 2 / 200).sum() < 27.9, counts
