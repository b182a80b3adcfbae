"""The event-triggered exchange's cache: what counts as moved, what a receiver holds."""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.federation.delta import PosteriorCache, distance
from mmvm.federation.posteriors import Posteriors, decode_table, encode_table


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


# ---------------------------------------------------------------- relative tolerance
def test_std_unit_measures_moves_in_posterior_standard_deviations():
    sigma = np.array([[0.1, 2.0]], np.float32)
    lv = 2 * np.log(sigma)
    mu0 = np.zeros((1, 2), np.float32)
    # 0.06 in dim 0 is 0.6 sigma; 1.0 in dim 1 is 0.5 sigma
    assert distance(mu0 + [[0.06, 0]], lv, mu0, lv, "std")[0] == pytest.approx(0.6)
    assert distance(mu0 + [[0, 1.0]], lv, mu0, lv, "std")[0] == pytest.approx(0.5)
    assert distance(mu0, lv + 0.5, mu0, lv, "std")[0] == pytest.approx(0.5 / np.sqrt(2))
    cache = PosteriorCache()
    cache.changed({"m": Posteriors([0], mu0, lv)}, tol=0.55, unit="std")
    assert not cache.changed({"m": Posteriors([0], mu0 + [[0, 1.0]], lv)}, 0.55, "std")
    assert cache.changed({"m": Posteriors([0], mu0 + [[0.06, 0]], lv)}, 0.55, "std")
    with pytest.raises(ValueError, match="delta unit"):
        distance(mu0, lv, mu0, lv, "nats")


# ---------------------------------------------------------------- int8 error feedback
def _send(sender, receiver, truth, tol, unit="latent"):
    """One exchange through the wire: the receiver's decoded values go into its cache."""
    fresh, deltas = sender.changed_int8(truth, tol, unit)
    blob = encode_table(fresh, int8=True, deltas=deltas, frame=np.arange(50))
    receiver.update(decode_table(blob, frame=np.arange(50), base=receiver.values))
    return fresh, deltas


def test_error_feedback_keeps_the_receiver_within_half_a_quantum_of_the_truth():
    rng = np.random.default_rng(0)
    rows = np.arange(50)
    mu, lv = rng.normal(size=(50, 3)).astype(np.float32), rng.normal(size=(50, 3)) \
        .astype(np.float32)
    sender, receiver = PosteriorCache(), PosteriorCache()
    for _ in range(200):  # a random walk, every row sent every round
        before = sender.values("m", rows) if sender.stores else (np.zeros_like(mu),) * 2
        _send(sender, receiver, {"m": Posteriors(rows, mu, lv)}, tol=-1.0)
        got_mu, got_lv = receiver.values("m", rows)
        # the receiver holds exactly what the sender thinks it holds
        np.testing.assert_array_equal(got_mu, sender.values("m", rows)[0])
        for got, want, prev in ((got_mu, mu, before[0]), (got_lv, lv, before[1])):
            step = np.abs(want - prev).max(0)  # the increment's peak per column
            assert (np.abs(got - want) <= step / 127 + 1e-7).all()
        mu = mu + 0.05 * rng.normal(size=mu.shape).astype(np.float32)
        lv = lv + 0.05 * rng.normal(size=lv.shape).astype(np.float32)


def test_error_feedback_converges_on_a_fixed_value():
    rows, mu = np.arange(50), np.linspace(-3, 3, 150, dtype=np.float32).reshape(50, 3)
    sender, receiver = PosteriorCache(), PosteriorCache()
    for _ in range(6):
        _send(sender, receiver, {"m": Posteriors(rows, mu, -mu)}, tol=0.0)
    assert np.abs(receiver.values("m", rows)[0] - mu).max() < 1e-6
    fresh, deltas = sender.changed_int8({"m": Posteriors(rows, mu, -mu)}, 1e-6)
    assert not fresh and not deltas  # nothing left to send


def test_event_triggered_int8_sends_only_moved_rows_and_stays_within_tolerance():
    rng = np.random.default_rng(1)
    rows = np.arange(50)
    mu, lv = rng.normal(size=(50, 2)).astype(np.float32), np.full((50, 2), -2, np.float32)
    sender, receiver = PosteriorCache(), PosteriorCache()
    fresh, deltas = _send(sender, receiver, {"m": Posteriors(rows, mu, lv)}, 0.5, "std")
    assert len(fresh["m"]) == 50 and not deltas
    mu2 = mu.copy()
    mu2[:5] += 1.0  # 2.7 sigma: these travel; the rest moved 0.01 sigma
    mu2[5:] += 0.001
    fresh, deltas = _send(sender, receiver, {"m": Posteriors(rows, mu2, lv)}, 0.5, "std")
    assert not fresh and deltas["m"].rows.tolist() == list(range(5))
    got_mu, got_lv = receiver.values("m", rows)
    assert (distance(mu2, lv, got_mu, got_lv, "std") <= 0.5).all()
