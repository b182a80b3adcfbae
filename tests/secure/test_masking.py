"""Secure aggregation: exact weighted mean, masked updates look uniform, dropout."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mmvm.secure.errors import MaskingError
from mmvm.secure.masking import (
    FixedPoint,
    aggregate_masked,
    mask_update,
    round_seed,
)

CTX = {"run_id": "run1", "round": 7, "group": "enc.m0"}
WEIGHTS = {"a": 120.0, "b": 45.0, "c": 300.0, "d": 8.0}


def reveal_seeds(me, pubs, dropped, **ctx) -> dict[str, bytes]:
    """A survivor's pair seeds with the ``dropped`` sites (what
    mmvm.secure.unmasking.reveal sends, its checks of the view apart)."""
    return {d: round_seed(me, pubs[d], **ctx) for d in dropped}


def _arrays(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.1, size=(64, 32)).astype(np.float32),
            rng.normal(0, 3.0, size=(32,)).astype(np.float32),
            np.array(2.5, dtype=np.float32)]


def _all_masked(keys, pubs, sites="abcd"):
    peers = {s: pubs[s] for s in sites}
    return {s: mask_update(keys[s], peers, _arrays(i), weight=WEIGHTS[s], **CTX)
            for i, s in enumerate(sites)}


def _true_mean(sites):
    total = sum(WEIGHTS[s] for s in sites)
    return [sum(WEIGHTS[s] * _arrays("abcd".index(s))[k].astype(np.float64)
                for s in sites) / total for k in range(3)]


def test_sum_decodes_to_weighted_mean(sites):
    keys, pubs = sites
    masked = _all_masked(keys, pubs)
    for s in masked:
        assert all(m.dtype == np.uint64 for m in masked[s])
        assert [m.shape for m in masked[s][:-1]] == [a.shape for a in _arrays(0)]
    means, weight = aggregate_masked(masked, return_weight=True)
    assert weight == sum(WEIGHTS.values())
    # each site's rounding error is <= 1/2 ulp of 2^-24; the mean's <= n/2 * 2^-24 / W
    bound = 4 * 0.5 * 2.0**-24 / weight + 1e-12
    for got, want in zip(means, _true_mean("abcd"), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=bound)


def test_single_masked_update_is_uniform_noise(sites):
    keys, pubs = sites
    peers = {s: pubs[s] for s in "abc"}
    n = 20_000
    plain = np.zeros(n)  # worst case: a constant, fully known plaintext
    signal = np.random.default_rng(1).normal(size=n)
    for x in (plain, signal):
        masked = mask_update(keys["a"], peers, [x], weight=1.0, **CTX)[0]
        u = masked.astype(np.float64) / 2.0**64
        assert stats.kstest(u, "uniform").pvalue > 1e-4
        counts = np.bincount((masked >> np.uint64(56)).astype(np.int64), minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-4  # top byte uniform on 256 bins
        if x is signal:  # no linear trace of the plaintext
            assert abs(np.corrcoef(u, x)[0, 1]) < 5 / np.sqrt(n)
            low = (masked & np.uint64(0xFFFF)).astype(np.float64)
            assert abs(np.corrcoef(low, x)[0, 1]) < 5 / np.sqrt(n)


def test_masks_depend_on_round_and_group(sites):
    keys, pubs = sites
    peers = {s: pubs[s] for s in "ab"}
    x = [np.zeros(16)]
    base = mask_update(keys["a"], peers, x, weight=1.0, **CTX)[0]
    other_group = mask_update(keys["a"], peers, x, weight=1.0,
                              **{**CTX, "group": "enc.m1"})[0]
    other_round = mask_update(keys["a"], peers, x, weight=1.0, **{**CTX, "round": 8})[0]
    assert not np.array_equal(base, other_group)
    assert not np.array_equal(base, other_round)


def test_dropout_recovery(sites):
    keys, pubs = sites
    masked = _all_masked(keys, pubs)
    survivors = {s: masked[s] for s in "ab"}  # c and d dropped after masking
    with pytest.raises(MaskingError, match="no seed for pairs"):
        aggregate_masked(survivors, participants="abcd")
    revealed = {s: reveal_seeds(keys[s], pubs, ["c", "d"], **CTX) for s in "ab"}
    means, weight = aggregate_masked(survivors, participants="abcd",
                                     revealed=revealed, return_weight=True)
    assert weight == WEIGHTS["a"] + WEIGHTS["b"]
    for got, want in zip(means, _true_mean("ab"), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    # a revealed seed of another round does not unmask this one
    wrong = {s: reveal_seeds(keys[s], pubs, ["c", "d"], **{**CTX, "round": 6})
             for s in "ab"}
    try:
        got = aggregate_masked(survivors, participants="abcd", revealed=wrong)
    except MaskingError:
        pass  # the decoded total weight was not positive
    else:
        assert not np.allclose(got[0], _true_mean("ab")[0], atol=1e-3)


def test_fixed_point_codec_and_overflow_guard(sites):
    keys, pubs = sites
    fp = FixedPoint()
    x = np.array([-4096.0, -1.0, 0.0, 1e-9, 3.14159, 4096.0])
    back = fp.decode(fp.encode(x))
    np.testing.assert_allclose(back, x, atol=2.0**-25)
    assert fp.max_weight(4) == pytest.approx(2.0**27 / 4)
    two = {s: pubs[s] for s in "ab"}
    with pytest.raises(MaskingError, match="overflow"):  # the bound itself is refused
        mask_update(keys["a"], two, [x], weight=fp.max_weight(2), **CTX)
    # beyond the range, NaN and inf are refused, never clipped or wrapped
    for bad in (np.array([4097.0]), np.array([np.nan]), np.array([-np.inf])):
        with pytest.raises(MaskingError, match="refusing to mask"):
            mask_update(keys["a"], two, [bad], weight=1.0, **CTX)
    with pytest.raises(MaskingError, match="outside the group"):
        aggregate_masked(_all_masked(keys, pubs, "ab"), participants="a")
