"""Event-triggered posterior exchange: send a row only when it moved.

Late in training most posteriors barely change between windows, yet every window
would resend all of them. With ``delta-tol`` > 0 each sender remembers what it last
sent; a (modality, aligned row) travels again only when max |mu - mu_sent| or
max |logvar - logvar_sent| exceeds the tolerance (or it was never sent), and each
receiver keeps a cache of the latest rows it received. Sites apply this to their own
posteriors (site -> server), the server to what it forwards (server -> site, exact
comparison). With tolerance 0 every changed row travels, as without the cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from mmvm.federation.posteriors import Posteriors, table_from_state, table_state


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

    def changed(self, table: Mapping[str, Posteriors], tol: float) -> dict[str, Posteriors]:
        """The rows of ``table`` that differ from the cache by more than ``tol``
        (all rows not cached yet); the cache is updated with exactly those rows."""
        out = {}
        for m, p in table.items():
            store = self.stores.get(m)
            if store is None:
                keep = np.arange(len(p))
            else:
                idx = store.slots(p.rows, add=False)
                known = idx >= 0
                moved = np.zeros(len(idx), dtype=bool)
                if known.any():
                    k = idx[known]
                    moved[known] = np.maximum(np.abs(p.mu[known] - store.mu[k]).max(1),
                                              np.abs(p.logvar[known] - store.logvar[k]).max(1)) > tol
                keep = np.flatnonzero(~known | moved)
            if len(keep):
                out[m] = p.take(keep)
        self.update(out)
        return out

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
