"""Sketches of a masked mean: the true mean passes, a changed one does not.

Checked against the mathematics of :mod:`mmvm.secure.sketch`: linearity through the
real masked aggregation (fixed point, self-masks, dropout), a row of ``S`` a random
direction of norm about 1, the rows a fixed function of (key, window) whatever the
block size, and each forgery the module names failing, also at the size of a real
model (3.4 million parameters), where a tolerance from worst-case bounds let a
scaled mean pass (review of 2026-12-06).
"""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.secure import sketch
from mmvm.secure.masking import aggregate_masked, mask_update
from tests.secure.test_masking import reveal_seeds

CTX = {"run_id": "run1", "round": 7, "group": "enc.m0"}
WEIGHTS = {"a": 120.0, "b": 45.0, "c": 300.0, "d": 8.0}
HOLDERS = 4


def _params(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.1, size=(64, 32)).astype(np.float32),
            rng.normal(0, 3.0, size=(32,)).astype(np.float32)]


def _masked_round(keys, pubs, sketch_keys, window, sites="abcd"):
    """Every site masks its parameters and every holder's rows of them."""
    peers = {s: pubs[s] for s in sites}
    out = {}
    for i, s in enumerate(sites):
        x = _params(i)
        rows = np.stack([sketch.rows(sketch_keys[h], window, x) for h in sites])
        out[s] = mask_update(keys[s], peers, [*x, rows], weight=WEIGHTS[s], **CTX)
    return out


def _mean_and_rows(means):
    return [m.astype(np.float32) for m in means[:-1]], means[-1]


@pytest.fixture
def sketch_keys():
    return {s: sketch.group_key(sketch.new_key(), "weights/m0/abcd") for s in "abcd"}


def test_the_masked_mean_passes_every_holders_check(sites, sketch_keys):
    keys, pubs = sites
    mean, rows = _mean_and_rows(aggregate_masked(_masked_round(keys, pubs, sketch_keys, 3)))
    total = sum(WEIGHTS.values())
    for i, s in enumerate("abcd"):  # the float32 mean a site loads, against its row
        assert sketch.matches(sketch_keys[s], 3, mean, rows[i], HOLDERS, total)
    # and the rows agree with the exact mean's far inside the tolerance
    exact = [sum(WEIGHTS[s] * _params(i)[k].astype(np.float64)
                 for i, s in enumerate("abcd")) / sum(WEIGHTS.values()) for k in range(2)]
    want = sketch.rows(sketch_keys["a"], 3, exact)
    assert np.abs(want - rows[0]).max() < 0.1 * sketch.tolerance(mean, HOLDERS, total)


def test_after_a_dropout_the_survivors_mean_passes(sites, sketch_keys):
    keys, pubs = sites
    masked = _masked_round(keys, pubs, sketch_keys, 2)
    survivors = {s: masked[s] for s in "abc"}
    revealed = {s: reveal_seeds(keys[s], pubs, ["d"], **CTX) for s in "abc"}
    mean, rows = _mean_and_rows(aggregate_masked(survivors, participants="abcd",
                                                 revealed=revealed))
    total = sum(WEIGHTS[s] for s in "abc")
    assert all(sketch.matches(sketch_keys[s], 2, mean, rows[i], HOLDERS, total)
               for i, s in enumerate("abc"))


@pytest.mark.parametrize("forge", ["noise", "one-parameter", "scaled", "shifted",
                                   "other-window", "other-holder", "other-group"])
def test_a_mean_the_server_changed_fails(sites, sketch_keys, forge):
    """What a server without the keys can do with the rows it was sent: keep them
    beside another mean, scale both (the constant coordinate), send the rows of the
    last window or of another holder, or a mean of another group."""
    keys, pubs = sites
    mean, rows = _mean_and_rows(aggregate_masked(_masked_round(keys, pubs, sketch_keys, 5)))
    key, window, row = sketch_keys["a"], 5, rows[0]
    if forge == "noise":  # a change of norm 0.01 spread over 2,080 parameters
        rng = np.random.default_rng(0)
        d = [rng.normal(size=m.shape) for m in mean]
        scale = 0.01 / np.sqrt(sum(float((x**2).sum()) for x in d))
        mean = [(m + scale * x).astype(np.float32) for m, x in zip(mean, d, strict=True)]
    elif forge == "one-parameter":
        mean = [mean[0].copy(), mean[1]]
        mean[0][3, 4] += 0.05
    elif forge == "scaled":  # the same factor on the mean and on its rows
        mean, row = [(1.01 * m).astype(np.float32) for m in mean], 1.01 * row
    elif forge == "shifted":  # rows moved by what the mean moved, were S all ones
        mean = [(m + 0.01).astype(np.float32) for m in mean]
        row = row + 0.01 * sum(m.size for m in mean) * np.sqrt(3 / 2081) / 2
    elif forge == "other-window":
        window = 6
    elif forge == "other-holder":
        row = rows[1]
    else:  # the key of another group of the same holder
        key = sketch.group_key(sketch_keys["a"], "weights/m1/abcd")
    assert not sketch.matches(key, window, mean, row, HOLDERS, sum(WEIGHTS.values()))


def test_rows_are_one_function_of_key_and_window(monkeypatch):
    key = sketch.new_key()
    x = np.random.default_rng(1).normal(size=700_001)  # three blocks of 2^18
    whole = sketch.rows(key, 0, [x])
    monkeypatch.setattr(sketch, "_CHUNK", 1000)  # the keystream goes on across blocks
    for split in ([x], [x[:5], x[5:400_000], x[400_000:]]):  # and across arrays
        np.testing.assert_allclose(sketch.rows(key, 0, split), whole, rtol=1e-12,
                                   atol=1e-12)
    assert not np.allclose(sketch.rows(key, 1, [x]), whole)
    assert not np.allclose(sketch.rows(sketch.new_key(), 0, [x]), whole)


def test_each_row_is_a_random_unit_direction():
    """Over keys, a row of ``S`` has mean 0 and ``E[(S v)_r^2] = |u|^2 / N`` for
    ``u = [v; 1]`` of ``N`` values (``E[S_rj^2] = 1 / N``: a row has norm about 1,
    which bounds the float32 rounding a row can see by ``2^-24 |u|``), and a
    forgery's rows are spread in that unit."""
    v = [np.random.default_rng(2).normal(size=999)]
    u = np.append(v[0], np.sqrt(1000))  # the constant coordinate c = sqrt(N)
    unit = float(np.sum(u**2)) / u.size
    got = np.concatenate([sketch.rows(sketch.new_key(), 0, v) for _ in range(300)])
    assert abs(float(np.mean(got))) < 4 * np.sqrt(unit / got.size)
    assert 0.9 < float(np.mean(got**2)) / unit < 1.1  # 2,400 rows: sd of the ratio ~0.03


def test_rows_refused_unless_shaped_and_finite():
    key, x = sketch.new_key(), _params(0)
    good = sketch.rows(key, 0, x)
    assert sketch.matches(key, 0, x, good, 3, 1.0)
    for bad in (good[:-1], np.append(good, 0.0), np.where(np.arange(8) == 2, np.nan, good)):
        assert not sketch.matches(key, 0, x, bad, 3, 1.0)
    with pytest.raises(ValueError, match="32 bytes"):
        sketch.rows(b"short", 0, x)


def test_at_a_real_models_size_a_scaled_or_nudged_mean_fails():
    """3.4 million parameters (the hippocampus network's size) of weights like a
    trained one's: the float32 mean a site is sent passes its float64 rows; scaled by
    1.001, or one bias moved by 0.01, it fails (with a tolerance from worst-case
    bounds, both passed every key: review of 2026-12-06)."""
    rng = np.random.default_rng(3)
    exact = [rng.normal(0, 0.022, size=3_400_000), rng.normal(0, 0.1, size=64)]
    sent = [a.astype(np.float32) for a in exact]
    nudged = [sent[0], sent[1].copy()]
    nudged[1][7] += 0.01
    for _ in range(2):
        key = sketch.new_key()
        rows = sketch.rows(key, 4, exact)
        assert sketch.matches(key, 4, sent, rows, 3, 1.0)  # W = 1: the loosest
        assert not sketch.matches(key, 4, [1.001 * a for a in sent], 1.001 * rows, 3,
                                  1.0)
        assert not sketch.matches(key, 4, nudged, rows, 3, 1.0)


def test_honest_rounding_stays_far_inside_the_tolerance(sites):
    """One sample a holder (``W = 4``, the fixed point's largest share) and weights
    up to 1000 (float32's): over 24 group keys, an honest mean's rows lie within a
    fifth of the tolerance, so a false alarm, final for the site's run, is as
    unlikely as the Hoeffding bound says."""
    keys, pubs = sites
    rng = np.random.default_rng(5)
    xs = {s: [rng.normal(0, 0.1, size=5000).astype(np.float32),
              rng.uniform(-1000, 1000, size=64).astype(np.float32)] for s in "abcd"}
    groups = [sketch.group_key(sketch.new_key(), "weights/m0/abcd") for _ in range(24)]
    masked = {s: mask_update(keys[s], pubs, [*xs[s], np.stack(
        [sketch.rows(g, 1, xs[s]) for g in groups])], weight=1.0, **CTX) for s in "abcd"}
    mean, rows = _mean_and_rows(aggregate_masked(masked))
    worst = max(float(np.abs(sketch.rows(g, 1, mean) - rows[i]).max())
                / sketch.tolerance(mean, HOLDERS, 4.0) for i, g in enumerate(groups))
    assert worst < 0.2, worst
