"""Sketches that let a holder check the server's masked mean (verifiable FedAvg).

Masked aggregation hides each holder's weights, but the server alone decodes the
mean, and nothing stopped it from sending the holders other "means": weights it
chose, on which every holder then trains, encodes its rows and evaluates (a model
built to read data out of the next updates, the model a site hands in). With
sketches the server can send only the true mean.

Each holder ``h`` of a modality draws a secret 32-byte key ``K_h`` when it attaches
and seals it to the other holders (never to the server). In window ``w`` every
holder ``i`` appends to its masked update, for every holder ``h``, the rows

    S_h(w) . [x_i; 1]        S_h(w): ROWS x (D + 1), entries uniform in (-1, 1) * sqrt(3 / (D + 1))

drawn from ChaCha20 under ``HMAC(K_h, label, w)`` (``ROWS`` bytes per parameter, in
parameter order), ``x_i`` the ``D`` shared
parameters as float64. The rows are masked and weighted like the parameters, so
the unmasked mean carries ``S_h(w) . [mean; 1]`` (linearity). Holder ``h``
recomputes that from the mean it is sent and compares. A server that does not know
``K_h`` must forge a mean ``m' = mean + d`` and rows that agree under a random
``S_h(w)`` it never saw: each row of ``S_h(w) . [d; 0]`` is spread like
``|d| / sqrt(D + 1)`` (each row of ``S`` is a random direction of norm about 1),
and the one multiple of ``[mean; 1]`` whose rows it knows has
the constant ``1`` fixed. A mean of another window fails too (``S`` depends on
``w``), so does a mean scaled by any factor (the constant coordinate), a change of
a single parameter by ``delta`` passes a row with probability about
``tol / (delta * sqrt(3 / D))``, all ``ROWS`` rows independently: a forged mean
passes only if it lies within about ``tol * sqrt(D)`` of the true one.

Tolerance: honest means differ from the rows only by the fixed-point rounding of
the masked sum (``n * 2^-25 / W`` per value, random: about ``1e-8`` on a row) and by
the float32 cast of the mean the site loads (at most ``2^-24 * |[mean; 1]|``):
:func:`tolerance` allows four times that bound plus ``1e-6``.

Not covered: a holder that colludes with the server knows every ``K_h`` and can
compute any rows (as it could subtract its own weights from a mean of two).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

ROWS = 8  # rows per holder: a forged mean must pass all of them
KEY_BYTES = 32
_CHUNK = 1 << 18  # parameters per block of S (ROWS x _CHUNK int8 at a time)


def new_key() -> bytes:
    """A holder's secret sketch key for one run."""
    return secrets.token_bytes(KEY_BYTES)


def flatten(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The parameters (in the given order) and the constant 1, as one float64 vector."""
    parts = [np.ravel(np.asarray(a, dtype=np.float64)) for a in arrays]
    return np.concatenate([*parts, np.ones(1)])


def rows(key: bytes, label: str, window: int, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``S(window) . [x; 1]`` (``ROWS`` float64) of the arrays under ``key``; ``label``
    names the group (one key sketches each of a holder's groups differently)."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a sketch key has {KEY_BYTES} bytes, not {len(key)}")
    x = flatten(arrays)
    seed = hmac.new(key, f"mmvm/sketch/v1|{label}|{int(window)}".encode(),
                    hashlib.sha256).digest()
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    scale = np.sqrt(3.0 / x.size) / 128.0
    out = np.zeros(ROWS)
    for start in range(0, x.size, _CHUNK):
        part = x[start:start + _CHUNK]
        block = np.frombuffer(stream.update(bytes(ROWS * part.size)), dtype=np.int8)
        out += part @ (block.reshape(part.size, ROWS).astype(np.float64) + 0.5)
    return out * scale


def tolerance(arrays: Sequence[np.ndarray]) -> float:
    """How far an honest mean's rows may lie from the rows it is sent (see above)."""
    return 1e-6 + 4 * 2.0**-24 * float(np.linalg.norm(flatten(arrays)))


def matches(key: bytes, label: str, window: int, mean: Sequence[np.ndarray],
            sent: np.ndarray) -> bool:
    """Whether ``sent`` (the rows the server sent with ``mean``) are this key's rows
    of ``mean`` for ``window``, within :func:`tolerance`."""
    got = np.asarray(sent, dtype=np.float64)
    if got.shape != (ROWS,) or not np.isfinite(got).all():
        return False
    want = rows(key, label, window, mean)
    return bool(np.abs(want - got).max() <= tolerance(mean))
