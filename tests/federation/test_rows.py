"""Membership in sorted row sets: the same answer as ``np.isin``."""

import numpy as np
import pytest

from mmvm.federation.rows import in_sorted


@pytest.mark.parametrize("seed", range(20))
def test_in_sorted_is_np_isin_for_a_sorted_set(seed):
    rng = np.random.default_rng(seed)
    sorted_rows = np.unique(rng.integers(0, 60, size=rng.integers(0, 40)))
    values = rng.integers(-5, 70, size=rng.integers(0, 50))  # repeats, out of range
    assert in_sorted(values, sorted_rows).tolist() == np.isin(values, sorted_rows).tolist()


def test_in_sorted_keeps_the_shape_of_its_values():
    got = in_sorted(np.array([[1, 2], [3, 9]]), np.array([2, 3]))
    assert got.tolist() == [[False, True], [True, False]]
    assert in_sorted(np.zeros(0, np.int64), np.array([1])).shape == (0,)
