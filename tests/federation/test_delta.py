"""The event-triggered exchange's cache: what counts as moved, what a receiver holds."""

from __future__ import annotations

import numpy as np

from mmvm.federation.delta import PosteriorCache
from mmvm.federation.posteriors import Posteriors


def _table(ids, mu, lv=None):
    mu = np.asarray(mu, dtype=np.float32)
    return {"m0": Posteriors(list(ids), mu, np.zeros_like(mu) if lv is None else
                             np.asarray(lv, dtype=np.float32))}


def test_first_send_is_everything_then_only_rows_that_moved_more_than_tol():
    cache = PosteriorCache()
    first = cache.changed(_table("abc", [[0, 0], [1, 1], [2, 2]]), tol=0.1)
    assert first["m0"].sample_ids == ["a", "b", "c"]
    again = cache.changed(_table("abc", [[0.05, 0], [1, 1.5], [2, 2]],
                                 lv=[[0, 0], [0, 0], [0, -0.2]]), tol=0.1)
    assert again["m0"].sample_ids == ["b", "c"]  # a moved 0.05 <= tol; c's logvar moved
    # the cache now holds what was sent: a keeps its old value, b and c the new ones
    held = cache.table(["a", "b", "c", "zz"])["m0"]
    assert held.sample_ids == ["a", "b", "c"]
    np.testing.assert_array_equal(held.mu, [[0, 0], [1, 1.5], [2, 2]])
    np.testing.assert_allclose(held.logvar[2], [0, -0.2], rtol=1e-6)


def test_tolerance_zero_sends_every_changed_row_and_nothing_unchanged():
    cache = PosteriorCache()
    cache.changed(_table("ab", [[0, 0], [1, 1]]), tol=0.0)
    out = cache.changed(_table("ab", [[0, 0], [1, 1.0000001]]), tol=0.0)
    assert out["m0"].sample_ids == ["b"]
    assert cache.changed(_table("ab", [[0, 0], [1, 1.0000001]]), tol=0.0) == {}


def test_state_round_trip_and_exclude():
    cache = PosteriorCache()
    cache.update(_table([f"s{i}" for i in range(50)], np.arange(100).reshape(50, 2)))
    cache.update({"m1": Posteriors(["s1"], np.ones((1, 2), np.float32),
                                   np.ones((1, 2), np.float32))})
    back = PosteriorCache.from_state(cache.state())
    t = back.table(["s49", "s1"], exclude=["m1"])
    assert list(t) == ["m0"]
    np.testing.assert_array_equal(t["m0"].mu, [[98, 99], [2, 3]])
    assert back.table(["s1"])["m1"].sample_ids == ["s1"]
