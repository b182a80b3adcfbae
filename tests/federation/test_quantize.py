"""int8 with power-of-two scales: error bounds and exact re-encoding."""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.federation.quantize import QMAX, dequantize, exponents, quantize, roundtrip


@pytest.mark.parametrize("magnitude", [1e-5, 0.3, 7.0, 1e4])
def test_roundtrip_error_is_at_most_half_a_quantum(magnitude):
    x = (np.random.default_rng(0).standard_normal((500, 4)) * magnitude).astype(np.float32)
    q, e = quantize(x)
    scale = np.exp2(e.astype(np.float64))
    assert np.abs(q.astype(int)).max() <= QMAX
    err = np.abs(dequantize(q, e).astype(np.float64) - x)
    assert (err <= scale / 2 + 1e-12 * np.abs(x)).all()
    # the scale is the smallest power of two that fits: at most 2 * peak / 127
    assert (scale <= 2 * np.abs(x).max(0) / QMAX).all()


def test_dequantized_values_re_encode_exactly():
    x = np.random.default_rng(1).standard_normal((100, 3)).astype(np.float32)
    once = roundtrip(x)
    np.testing.assert_array_equal(roundtrip(once), once)
    np.testing.assert_array_equal(roundtrip(once[:7]), once[:7])  # finer scales, same values


def test_zero_and_empty_columns():
    x = np.zeros((3, 2), np.float32)
    x[:, 1] = [0.0, 1.0, -2.0]
    np.testing.assert_array_equal(roundtrip(x), x)
    assert exponents(np.zeros((0, 2), np.float32)).shape == (2,)
