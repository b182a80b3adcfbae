"""The server's logic without the wire: alignment, routing, FedAvg bookkeeping.

The coordinator learns from each site which modalities it holds for which sample ids,
fixes the aligned id order (sorted union: the order the centralized dataset uses), and
for every window tells each site which posteriors of the *other* modalities it needs:
those of the rows the site holds among the window's rows. Modalities held by several
sites (horizontal or hybrid layouts) have their weights averaged among those sites,
weighted by how many samples of the modality each holds (FedAvg).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mmvm.federation.plan import Window, exchange_plan
from mmvm.federation.posteriors import Posteriors, merge_tables, select_rows


class FederationError(RuntimeError):
    """The sites do not form a valid federation (overlaps, unknown modalities, ...)."""


@dataclass
class SiteInfo:
    key: str  # transport address (Flower node id as text)
    name: str
    modalities: list[str]
    sample_ids: list[str]
    held: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.held = set(self.sample_ids)


class Coordinator:
    def __init__(self, sites: list[SiteInfo], modalities: list[str], *, batch_size: int,
                 seed: int, epochs: int, exchange: str = "step", k: int = 1,
                 local_epochs: int = 1, warmup: bool = False) -> None:
        self.sites = {s.key: s for s in sites}
        self.modalities = list(modalities)
        names = [s.name for s in sites]
        if len(set(names)) != len(names):
            raise FederationError(f"two sites report the same name: {sorted(names)}")
        for s in sites:
            unknown = [m for m in s.modalities if m not in self.modalities]
            if unknown:
                raise FederationError(f"site {s.name} holds modalities {unknown} that the "
                                      f"config does not know ({self.modalities})")
        self.holders = {m: [s.key for s in sites if m in s.modalities] for m in self.modalities}
        missing = [m for m, h in self.holders.items() if not h]
        if missing:
            raise FederationError(f"no connected site holds modalities {missing}")
        for m, keys in self.holders.items():
            seen: dict[str, str] = {}
            for key in keys:
                for sid in self.sites[key].held:
                    if sid in seen:
                        raise FederationError(
                            f"sample {sid!r} of modality {m!r} is held by both "
                            f"{self.sites[seen[sid]].name} and {self.sites[key].name}")
                    seen[sid] = key
        self.ids = sorted(set().union(*(s.held for s in sites)))
        self.plan_args = {"batch_size": batch_size, "seed": seed, "epochs": epochs,
                          "exchange": exchange, "k": k, "local_epochs": local_epochs,
                          "warmup": warmup}
        self.plan: list[Window] = exchange_plan(len(self.ids), **self.plan_args)

    @property
    def shared(self) -> dict[str, list[str]]:
        """Modalities held by more than one site -> their sites' keys (FedAvg groups)."""
        return {m: keys for m, keys in self.holders.items() if len(keys) > 1}

    def window_ids(self, index: int) -> list[str]:
        if index >= len(self.plan):
            return []
        return [self.ids[int(r)] for r in self.plan[index].rows]

    def route(self, index: int, table: Mapping[str, Posteriors]) -> dict[str, dict]:
        """Per site: the other modalities' posteriors for its rows of window ``index``."""
        wanted = set(self.window_ids(index))
        out = {}
        for key, site in self.sites.items():
            out[key] = select_rows(table, wanted & site.held, exclude=site.modalities)
        return out

    @staticmethod
    def merge(tables: list[Mapping[str, Posteriors]]) -> dict[str, Posteriors]:
        return merge_tables(tables)

    def fedavg(self, weights: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]
               ) -> dict[str, dict[str, np.ndarray]]:
        """``weights[site key][modality]`` -> the sample-weighted mean per shared modality."""
        out = {}
        for m, keys in self.shared.items():
            got = [k for k in keys if m in weights.get(k, {})]
            if not got:
                continue
            counts = np.array([len(self.sites[k].held) for k in got], dtype=np.float64)
            frac = counts / counts.sum()
            names = weights[got[0]][m].keys()
            out[m] = {n: sum(f * weights[k][m][n].astype(np.float64) for k, f in zip(got, frac)
                             ).astype(weights[got[0]][m][n].dtype) for n in names}
        return out
