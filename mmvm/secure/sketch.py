"""Sketches that let a holder check the server's masked mean (verifiable FedAvg).

Masked aggregation hides each holder's weights, but the server alone decodes the
mean, and nothing stopped it from sending the holders other "means": weights it
chose, on which every holder then trains, encodes its rows and evaluates (a model
built to read data out of the next updates, the model a site hands in). With
sketches the server can send only the true mean.

Each holder ``h`` of a modality draws a secret key when it attaches and seals the
key of each group it is in (:func:`group_key`) to that group's other holders, never
to the server. In window ``w`` every holder ``i`` appends to its masked update, for
every holder ``h``, the rows

    S_h(w) . [x_i; c]     S_h(w): ROWS x N, entries uniform in (-1, 1) * sqrt(3 / N)

drawn from ChaCha20 under ``HMAC(K_h, w)`` (``ROWS`` bytes per value, in value
order), ``x_i`` the ``D`` shared parameters as float64, ``N = D + 1`` and the
constant ``c = sqrt(N)``. The rows are masked and weighted like the parameters, so
the unmasked mean carries ``S_h(w) . [mean; c]`` (linearity). Holder ``h``
recomputes that from the mean it is sent and compares (:func:`matches`).

A server that does not know ``K_h`` must forge a mean ``m' = mean + d`` and rows
that agree under an ``S_h(w)`` it never saw. Each row of ``S . [d; 0]`` is a sum of
independent terms of variance ``d_j^2 / N``; the only vector whose rows it knows is
``[mean; c]``, and the constant coordinate rules out any multiple of it but itself
(a mean scaled by ``a`` moves each row by ``|1 - a| sqrt(3) |U|``, ``U`` uniform in
(-1, 1)). So ``d`` spread over many parameters passes a row with a chance of about
``tol * sqrt(N) / |d|``, one parameter moved by ``delta`` with about
``tol * sqrt(N / 3) / delta`` (none once ``delta`` is 256 times that: ``S``'s entries
take 256 values), every row independently. The rows change with the window (a
mean relabelled to another window fails) and the group key.

Tolerance (:func:`tolerance`): an honest mean differs from its rows by the fixed
point rounding of the masked sums (``<= n * 2^-25 / W`` per value and per row, ``n``
holders, ``W`` the total weight, which the server sends), by the float32 cast of the
mean the site is sent (half an ulp per value) and by float64 arithmetic. ``S`` is
symmetric and independent of all of them, so a row sees each as a sum of
independent terms, each within ``sqrt(3 / N)`` times its bound; by Hoeffding's
inequality a row beyond eight times ``sqrt(3)`` times the bound's root sum of
squares has a chance ``<= 2 exp(-32)``, and :func:`tolerance` adds the three such
terms. At 3.4 million parameters of a trained model's size, 3 holders and 192
samples that is about ``2.5e-8``: a change passes unseen only within about
``tol * sqrt(N)`` (``5e-5``) spread out, or ``tol * sqrt(N / 3)`` (``3e-5``) on one
parameter.

One check per run: a holder that finds a mean that does not match refuses every
later mean of the run (:mod:`mmvm.federation.sealed_sketch`): pass or fail of
repeated tries, each with other rows, would tell the server ``S`` bit by bit.

Not covered: a co-holder that colludes with the server holds the group's keys and
can compute any rows (as it could subtract its own weights from a mean of two).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import secrets
from collections.abc import Iterator, Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

ROWS = 8  # rows per holder: a forged mean must pass all of them
KEY_BYTES = 32
_CHUNK = 1 << 18  # values per block of S (ROWS x _CHUNK int8 at a time)


def new_key() -> bytes:
    """A holder's secret sketch key for one run."""
    return secrets.token_bytes(KEY_BYTES)


def group_key(key: bytes, label: str) -> bytes:
    """The key of one group (the one a holder seals to that group's holders only)."""
    return hmac.new(key, f"mmvm/sketch-group/v1|{label}".encode(), hashlib.sha256).digest()


def _values(arrays: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
    """The parameters as float64 blocks of at most ``_CHUNK`` values (no float64
    copy of a whole model)."""
    for a in arrays:
        flat = np.ravel(np.asarray(a))
        for start in range(0, flat.size, _CHUNK):
            yield flat[start:start + _CHUNK].astype(np.float64)


def rows(key: bytes, window: int, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``S(window) . [x; c]`` (``ROWS`` float64) of the arrays under a group ``key``."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a sketch key has {KEY_BYTES} bytes, not {len(key)}")
    n = sum(int(np.size(a)) for a in arrays) + 1
    seed = hmac.new(key, f"mmvm/sketch/v2|{int(window)}".encode(), hashlib.sha256).digest()
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    out = np.zeros(ROWS)
    for part in itertools.chain(_values(arrays), [np.array([math.sqrt(n)])]):
        block = np.frombuffer(stream.update(bytes(ROWS * part.size)), dtype=np.int8)
        # S's entries (b + 0.5) / 128 as b then the half: 10x faster than adding first
        out += part @ block.reshape(part.size, ROWS).astype(np.float64) + 0.5 * part.sum()
    return out * (math.sqrt(3.0 / n) / 128.0)


def tolerance(arrays: Sequence[np.ndarray], holders: int, weight: float) -> float:
    """How far an honest mean's rows may lie from the rows it is sent (module doc):
    8 x (fixed point ``sqrt(3) n 2^-25 / W``, float32 ``sqrt(3) 2^-24 |m| / sqrt(N)``,
    float64 ``2^-40 |m|``) plus the rows' own rounding ``n 2^-25 / W``, for ``n``
    holders of total weight ``W = weight >= 1``."""
    n = sum(int(np.size(a)) for a in arrays) + 1
    norm = math.sqrt(sum(float(part @ part) for part in _values(arrays)))
    fixed = holders * 2.0**-25 / max(1.0, weight)
    sd = math.sqrt(3) * (fixed + 2.0**-24 * norm / math.sqrt(n)) + 2.0**-40 * norm
    return 8 * sd + fixed


def matches(key: bytes, window: int, mean: Sequence[np.ndarray], sent: np.ndarray,
            holders: int, weight: float) -> bool:
    """Whether ``sent`` (the rows the server sent with ``mean``) are this group key's
    rows of ``mean`` for ``window``, within :func:`tolerance` for ``holders`` of total
    weight ``weight``."""
    got = np.asarray(sent, dtype=np.float64)
    if got.shape != (ROWS,) or not np.isfinite(got).all():
        return False
    return bool(np.abs(rows(key, window, mean) - got).max()
                <= tolerance(mean, holders, weight))
