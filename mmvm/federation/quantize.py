"""int8 quantization of posterior columns with power-of-two scales.

Each column j of a [n, D] array gets a scale ``2**e[j]``, the smallest power of two
with ``max_i |x_ij| / 2**e[j] <= 127``; values travel as ``round(x / 2**e)`` in
int8 and come back as ``q * 2**e``, within half a quantum (``2**e / 2``) of ``x``.

Why powers of two: ``q * 2**e`` is exact in float32, and quantizing a dequantized
array again gives back the same integers and exponents (or finer exponents with
exactly the same values). A sender can therefore compute *exactly* what the
receiver will hold (:func:`roundtrip`) and keep that as its record of the receiver's
state; error feedback (delta coding against that record, :mod:`mmvm.federation.delta`)
then never drifts, not even by a rounding error.
"""

from __future__ import annotations

import numpy as np

QMAX = 127
EXP_MIN, EXP_MAX = -64, 64  # scales 2**-64 .. 2**64: far beyond any posterior


def exponents(x: np.ndarray) -> np.ndarray:
    """Per column of ``x`` [n, D]: the exponent of its scale (int8 [D])."""
    peak = np.abs(x).max(0) if len(x) else np.zeros(x.shape[1], np.float32)
    with np.errstate(divide="ignore"):
        e = np.ceil(np.log2(peak.astype(np.float64) / QMAX))
    e = np.where(peak > 0, e, EXP_MIN)
    # log2 can land one below the true bound by a rounding error: check and fix
    e = np.where(peak.astype(np.float64) > QMAX * np.exp2(e), e + 1, e)
    return np.clip(e, EXP_MIN, EXP_MAX).astype(np.int8)


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` [n, D] -> (int8 values [n, D], int8 exponents [D])."""
    e = exponents(x)
    q = np.rint(x.astype(np.float64) / np.exp2(e.astype(np.float64)))
    return np.clip(q, -QMAX, QMAX).astype(np.int8), e


def dequantize(q: np.ndarray, e: np.ndarray) -> np.ndarray:
    """int8 values [n, D] and exponents [D] -> float32 [n, D] (exact)."""
    return (q.astype(np.float32) * np.exp2(e.astype(np.float32))).astype(np.float32)


def roundtrip(x: np.ndarray) -> np.ndarray:
    """What a receiver reconstructs from ``x`` sent in int8."""
    return dequantize(*quantize(x))
