"""Event-triggered posterior exchange: send a row only when it moved.

Late in training most posteriors barely change between windows, yet every window
would resend all of them. With ``delta-tol`` > 0 each sender remembers what it last
sent; a (modality, aligned row) travels again only when max |mu - mu_sent| or
max |logvar - logvar_sent| exceeds the tolerance (or it was never sent), and each
receiver keeps a cache of the latest rows it received. Sites apply this to their own
posteriors (site -> server), the server to what it forwards (server -> site, exact
comparison). With tolerance 0 every changed row travels, as without the cache.

The tolerance is in latent units (``delta-unit = "latent"``) or in units of the
posterior itself (``"std"``): a row moved by max over dimensions of
max(|d mu| / sigma, |d logvar| / sqrt 2), sigma its current standard deviation. For
small moves KL(new || old) ~ 1/2 sum[(d mu / sigma)^2 + (d logvar)^2 / 2]: both terms
weigh the same in that distance, and a 0.5 tolerance means "moved by half a sigma".

int8 with error feedback (:meth:`PosteriorCache.changed_int8`): the sender's cache
holds exactly what the receiver reconstructed (:func:`~mmvm.federation.quantize.
roundtrip` is exact), a known row travels as the int8 increment from that value to
the truth, and what quantization missed stays in the next distance and the next
increment: the receiver never drifts more than half a quantum of the last increment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from mmvm.federation.posteriors import Posteriors, table_from_state, table_state
from mmvm.federation.quantize import roundtrip

UNITS = ("latent", "std")


def distance(mu: np.ndarray, logvar: np.ndarray, mu_ref: np.ndarray, lv_ref: np.ndarray,
             unit: str = "latent") -> np.ndarray:
    """Per row: how far (mu, logvar) [n, D] moved from the reference, in ``unit``."""
    dmu, dlv = np.abs(mu - mu_ref), np.abs(logvar - lv_ref)
    if unit == "std":
        dmu, dlv = dmu * np.exp(-0.5 * logvar), dlv / np.sqrt(2.0)
    elif unit != "latent":
        raise ValueError(f"delta unit must be one of {list(UNITS)}, got {unit!r}")
    return np.maximum(dmu.max(1), dlv.max(1)) if len(mu) else np.zeros(0, np.float32)


class _Store:
    """One modality's rows: aligned row -> slot, and growing [capacity, D] arrays."""

    def __init__(self, dim: int) -> None:
        self.slot: dict[int, int] = {}
        self.mu = np.zeros((0, dim), dtype=np.float32)
        self.logvar = np.zeros((0, dim), dtype=np.float32)

    def slots(self, rows: np.ndarray, add: bool) -> np.ndarray:
        """Slots of ``rows`` (-1 if unknown), new slots appended when ``add``."""
        ids = np.asarray(rows, dtype=np.int64).tolist()
        out = np.fromiter((self.slot.get(s, -1) for s in ids), dtype=np.int64, count=len(ids))
        if add and (out < 0).any():
            new = np.flatnonzero(out < 0)
            start = len(self.slot)
            for j, i in enumerate(new):
                self.slot[ids[i]] = start + j
            out[new] = start + np.arange(len(new))
            grow = start + len(new) - len(self.mu)
            if grow > 0:
                pad = np.zeros((max(grow, len(self.mu)), self.mu.shape[1]), dtype=np.float32)
                self.mu, self.logvar = np.concatenate([self.mu, pad]), np.concatenate(
                    [self.logvar, pad])
        return out


class PosteriorCache:
    """Latest known (mu, logvar) per modality and aligned row."""

    def __init__(self) -> None:
        self.stores: dict[str, _Store] = {}

    def update(self, table: Mapping[str, Posteriors]) -> None:
        for m, p in table.items():
            store = self.stores.setdefault(m, _Store(p.mu.shape[1]))
            idx = store.slots(p.rows, add=True)
            store.mu[idx], store.logvar[idx] = p.mu, p.logvar

    def changed(self, table: Mapping[str, Posteriors], tol: float,
                unit: str = "latent") -> dict[str, Posteriors]:
        """The rows of ``table`` that differ from the cache by more than ``tol``
        (all rows not cached yet); the cache is updated with exactly those rows."""
        out = {}
        for m, p in table.items():
            idx, moved = self._moved(m, p, tol, unit)
            keep = np.flatnonzero((idx < 0) | moved)
            if len(keep):
                out[m] = p.take(keep)
        self.update(out)
        return out

    def changed_int8(self, table: Mapping[str, Posteriors], tol: float,
                     unit: str = "latent") -> tuple[dict[str, Posteriors],
                                                    dict[str, Posteriors]]:
        """int8 with error feedback: (values of rows not cached yet, increments of
        cached rows that differ by more than ``tol``; ``tol < 0``: of every cached
        row), both as the receiver will decode them. The cache then holds exactly
        the receiver's values (cached value + increment, in float32)."""
        fresh, deltas = {}, {}
        for m, p in table.items():
            idx, moved = self._moved(m, p, tol, unit)
            new = np.flatnonzero(idx < 0)
            if len(new):
                fresh[m] = Posteriors(p.rows[new], roundtrip(p.mu[new]),
                                      roundtrip(p.logvar[new]))
            k = np.flatnonzero(moved)
            if len(k):
                store, at = self.stores[m], idx[k]
                inc = Posteriors(p.rows[k], roundtrip(p.mu[k] - store.mu[at]),
                                 roundtrip(p.logvar[k] - store.logvar[at]))
                store.mu[at] += inc.mu
                store.logvar[at] += inc.logvar
                deltas[m] = inc
        self.update(fresh)
        return fresh, deltas

    def _moved(self, m: str, p: Posteriors, tol: float, unit: str
               ) -> tuple[np.ndarray, np.ndarray]:
        """Slots of ``p``'s rows here (-1: unknown) and which known ones moved > tol."""
        store = self.stores.get(m)
        if store is None:
            return np.full(len(p), -1, dtype=np.int64), np.zeros(len(p), dtype=bool)
        idx = store.slots(p.rows, add=False)
        known = np.flatnonzero(idx >= 0)
        moved = np.zeros(len(idx), dtype=bool)
        if len(known):
            at = idx[known]
            moved[known] = distance(p.mu[known], p.logvar[known], store.mu[at],
                                    store.logvar[at], unit) > tol
        return idx, moved

    def values(self, m: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Cached (mu, logvar) of modality ``m`` for ``rows``; None if any is unknown
        (the ``base`` a receiver decodes increments with)."""
        store = self.stores.get(m)
        idx = store.slots(rows, add=False) if store is not None else None
        if idx is None or (idx < 0).any():
            return None
        return store.mu[idx].copy(), store.logvar[idx].copy()

    def table(self, wanted: np.ndarray, exclude: Iterable[str] = ()) -> dict[str, Posteriors]:
        """Cached entries for the ``wanted`` rows (those known), without ``exclude``."""
        wanted, skip = np.asarray(wanted, dtype=np.int64), set(exclude)
        out = {}
        for m, store in self.stores.items():
            if m in skip:
                continue
            idx = store.slots(wanted, add=False)
            have = np.flatnonzero(idx >= 0)
            if len(have):
                out[m] = Posteriors(wanted[have], store.mu[idx[have]].copy(),
                                    store.logvar[idx[have]].copy())
        return out

    def state(self) -> dict:
        """Tensors only (loadable with ``torch.load(weights_only=True)``)."""
        table = {}
        for m, store in self.stores.items():
            n = len(store.slot)
            if n:
                table[m] = Posteriors(np.fromiter(store.slot, np.int64, n), store.mu[:n],
                                      store.logvar[:n])
        return table_state(table)

    @classmethod
    def from_state(cls, state: Mapping) -> "PosteriorCache":
        cache = cls()
        cache.update(table_from_state(state))
        return cache
