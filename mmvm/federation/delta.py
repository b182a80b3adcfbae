"""Event-triggered posterior exchange: send a row only when it moved.

Late in training most posteriors barely change between windows, yet every window
would resend all of them. With ``delta-tol`` > 0 each sender remembers what it last
sent; a (modality, sample) row travels again only when max |mu - mu_sent| or
max |logvar - logvar_sent| exceeds the tolerance (or it was never sent), and each
receiver keeps a cache of the latest rows it received. Sites apply this to their own
posteriors (site -> server), the server to what it forwards (server -> site, exact
comparison). With tolerance 0 every changed row travels, as without the cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from mmvm.federation.posteriors import Posteriors


class PosteriorCache:
    """Latest known (mu, logvar) per modality and sample id."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}

    def update(self, table: Mapping[str, Posteriors]) -> None:
        for m, p in table.items():
            store = self.rows.setdefault(m, {})
            for i, sid in enumerate(p.sample_ids):
                store[sid] = (p.mu[i].copy(), p.logvar[i].copy())

    def changed(self, table: Mapping[str, Posteriors], tol: float) -> dict[str, Posteriors]:
        """The rows of ``table`` that differ from the cache by more than ``tol``
        (all rows not cached yet); the cache is updated with exactly those rows."""
        out = {}
        for m, p in table.items():
            store = self.rows.get(m, {})
            keep = []
            for i, sid in enumerate(p.sample_ids):
                old = store.get(sid)
                if old is None or max(np.abs(p.mu[i] - old[0]).max(),
                                      np.abs(p.logvar[i] - old[1]).max()) > tol:
                    keep.append(i)
            if keep:
                out[m] = Posteriors([p.sample_ids[i] for i in keep], p.mu[keep], p.logvar[keep])
        self.update(out)
        return out

    def table(self, wanted: Iterable[str], exclude: Iterable[str] = ()) -> dict[str, Posteriors]:
        """Cached rows for the ids ``wanted`` (those known), without ``exclude``."""
        wanted, skip = list(wanted), set(exclude)
        out = {}
        for m, store in self.rows.items():
            if m in skip:
                continue
            ids = [s for s in wanted if s in store]
            if ids:
                out[m] = Posteriors(ids, np.stack([store[s][0] for s in ids]),
                                    np.stack([store[s][1] for s in ids]))
        return out

    def state(self) -> dict:
        """Tensors and lists only (loadable with ``torch.load(weights_only=True)``)."""
        return {m: {"ids": list(store), "mu": torch.from_numpy(np.stack([v[0] for v in store.values()])),
                    "logvar": torch.from_numpy(np.stack([v[1] for v in store.values()]))}
                for m, store in self.rows.items() if store}

    @classmethod
    def from_state(cls, state: Mapping) -> "PosteriorCache":
        cache = cls()
        cache.update({m: Posteriors(list(s["ids"]), s["mu"].numpy(), s["logvar"].numpy())
                      for m, s in state.items()})
        return cache
