"""The event-triggered exchange's cache: what counts as moved, what a receiver holds."""

from __future__ import annotations

import numpy as np

from mmvm.federation.delta import PosteriorCache
from mmvm.federation.posteriors import Posteriors


def _table(rows, mu, lv=None):
    mu = np.asarray(mu, dtype=np.float32)
    return {"m0": Posteriors(np.asarray(rows), mu, np.zeros_like(mu) if lv is None else
                             np.asarray(lv, dtype=np.float32))}


def test_first_send_is_everything_then_only_rows_that_moved_more_than_tol():
    cache = PosteriorCache()
    first = cache.changed(_table([0, 1, 2], [[0, 0], [1, 1], [2, 2]]), tol=0.1)
    assert first["m0"].rows.tolist() == [0, 1, 2]
    again = cache.changed(_table([0, 1, 2], [[0.05, 0], [1, 1.5], [2, 2]],
                                 lv=[[0, 0], [0, 0], [0, -0.2]]), tol=0.1)
    assert again["m0"].rows.tolist() == [1, 2]  # 0 moved 0.05 <= tol; 2's logvar moved
    # the cache now holds what was sent: 0 keeps its old value, 1 and 2 the new ones
    held = cache.table(np.array([0, 1, 2, 99]))["m0"]
    assert held.rows.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(held.mu, [[0, 0], [1, 1.5], [2, 2]])
    np.testing.assert_allclose(held.logvar[2], [0, -0.2], rtol=1e-6)


def test_tolerance_zero_sends_every_changed_row_and_nothing_unchanged():
    cache = PosteriorCache()
    cache.changed(_table([0, 1], [[0, 0], [1, 1]]), tol=0.0)
    out = cache.changed(_table([0, 1], [[0, 0], [1, 1.0000001]]), tol=0.0)
    assert out["m0"].rows.tolist() == [1]
    assert cache.changed(_table([0, 1], [[0, 0], [1, 1.0000001]]), tol=0.0) == {}


def test_state_round_trip_and_exclude():
    cache = PosteriorCache()
    cache.update(_table(np.arange(50), np.arange(100).reshape(50, 2)))
    cache.update({"m1": Posteriors(np.array([1]), np.ones((1, 2), np.float32),
                                   np.ones((1, 2), np.float32))})
    back = PosteriorCache.from_state(cache.state())
    t = back.table(np.array([49, 1]), exclude=["m1"])
    assert list(t) == ["m0"]
    np.testing.assert_array_equal(t["m0"].mu, [[98, 99], [2, 3]])
    assert back.table(np.array([1]))["m1"].rows.tolist() == [1]
