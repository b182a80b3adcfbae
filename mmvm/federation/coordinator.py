"""The server's logic without the wire: alignment, routing, FedAvg bookkeeping.

The coordinator learns from each site which modalities it holds for which
identifiers (sample ids, or keyed pseudonyms in secure mode), fixes the aligned row
order (sorted union: the order the centralized dataset uses), and for every window
tells each site which posteriors of the *other* modalities it needs: those of the
rows the site holds among the window's rows. Modalities held by several sites
(horizontal or hybrid layouts) have their weights averaged among those sites,
weighted by how many samples each holds (FedAvg).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mmvm.federation.messages import AttachRequest
from mmvm.federation.plan import Plan, PlanArgs, window_counts
from mmvm.federation.posteriors import Posteriors, select_rows
from mmvm.secure.masking import FixedPoint

FLOATS = tuple(np.dtype(t) for t in ("float16", "float32", "float64"))
CLIP = FixedPoint().clip  # the largest weight a site may send (secure mode's fixed point)


class FederationError(RuntimeError):
    """The sites do not form a valid federation, or a site broke the protocol."""


@dataclass
class SiteInfo:
    key: str  # transport address (Flower node id as text)
    name: str
    modalities: list[str]
    identifiers: list[str]  # as the site reported them (its order)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per identifier
    held: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted rows


class Coordinator:
    def __init__(self, sites: list[SiteInfo], modalities: list[str], plan: PlanArgs) -> None:
        self.sites = {s.key: s for s in sites}
        self.modalities = list(modalities)
        self._check_sites(sites)
        self.holders = {m: [s.key for s in sites if m in s.modalities] for m in self.modalities}
        missing = [m for m, h in self.holders.items() if not h]
        if missing:
            raise FederationError(f"no connected site holds modalities {missing}")
        self.ids = sorted(set().union(*(s.identifiers for s in sites)))
        row_of = {sid: r for r, sid in enumerate(self.ids)}
        for s in sites:
            s.rows = np.fromiter((row_of[i] for i in s.identifiers), dtype=np.int64,
                                 count=len(s.identifiers))
            s.held = np.sort(s.rows)
        self._holds = {s.key: np.zeros(len(self.ids), dtype=bool) for s in sites}
        for s in sites:
            self._holds[s.key][s.held] = True
        self._check_overlaps()
        self._check_coupled()
        self.plan_args = plan
        self.plan: Plan = plan.plan(len(self.ids))
        self._window_rows: dict[int, np.ndarray] = {}
        self._shapes: dict[str, dict[str, tuple]] = {}  # each modality's (expect_shapes)

    def _check_sites(self, sites: list[SiteInfo]) -> None:
        names = [s.name for s in sites]
        if len(set(names)) != len(names):
            raise FederationError(f"two sites report the same name: {sorted(names)}")
        for s in sites:
            unknown = [m for m in s.modalities if m not in self.modalities]
            if unknown:
                raise FederationError(f"site {s.name} holds modalities {unknown} that the "
                                      f"config does not know ({self.modalities})")
            if len(set(s.identifiers)) != len(s.identifiers):
                raise FederationError(f"site {s.name} reported a sample twice")

    def _check_overlaps(self) -> None:
        for m, keys in self.holders.items():
            rows = np.concatenate([self.sites[k].held for k in keys])
            uniq, counts = np.unique(rows, return_counts=True)
            if (counts > 1).any():
                r = int(uniq[counts > 1][0])
                both = [self.sites[k].name for k in keys
                        if np.isin(r, self.sites[k].held)]
                raise FederationError(f"a sample of modality {m!r} is held by both "
                                      f"{both[0]} and {both[1]}")

    def alignment(self) -> dict:
        """How many aligned samples each modality has, and how many have two or more
        (only those couple the modalities' models through the mixture prior)."""
        count = np.zeros(self.n, np.int64)
        rows = {m: np.concatenate([self.sites[k].held for k in keys])
                for m, keys in self.holders.items()}
        for r in rows.values():
            count[r] += 1
        return {"samples": self.n, "per_modality": {m: int(len(r)) for m, r in rows.items()},
                "coupled": {m: int((count[r] >= 2).sum()) for m, r in rows.items()},
                "multimodal": int((count >= 2).sum()),
                "complete": int((count == len(self.modalities)).sum())}

    def _check_coupled(self) -> None:
        if len(self.modalities) > 1 and self.n and self.alignment()["multimodal"] == 0:
            names = sorted(s.name for s in self.sites.values())
            raise FederationError(
                f"the sites {names} share no sample: no id is held for two modalities, "
                f"so nothing would couple their models; check that the sites name "
                f"samples the same way (same preparer and metadata, and the same train/"
                f"test split options: --seed, --test-fraction, and groups all sites "
                f"share, not each site's own numbering)")

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def shared(self) -> dict[str, list[str]]:
        """Modalities held by more than one site -> their sites' keys (FedAvg groups)."""
        return {m: keys for m, keys in self.holders.items() if len(keys) > 1}

    def name(self, key: str) -> str:
        return self.sites[key].name

    def window_rows(self, index: int) -> np.ndarray:
        """Sorted rows window ``index`` trains on (empty past the last window)."""
        if index >= len(self.plan):
            return np.zeros(0, dtype=np.int64)
        rows = self._window_rows.get(index)
        if rows is None:  # asked ~10 times a window (and the next): made once, read-only
            if len(self._window_rows) > 3:
                self._window_rows.clear()
            rows = self._window_rows[index] = self.plan[index].rows.numpy()
            rows.flags.writeable = False
        return rows

    def idle_holder(self) -> tuple[str, str, int] | None:
        """The first (modality, site name, window) in which a holder of a shared
        modality trains none of its rows, or None. Secure sites refuse such plans
        (:meth:`mmvm.federation.policy.SitePolicy.check_plan`); the server says so
        before it attaches anyone."""
        pairs = [(m, key) for m, keys in self.shared.items() for key in keys]
        if not pairs:
            return None
        flags = np.stack([self._holds[key] for _, key in pairs], axis=1)
        idle = window_counts(self.plan, flags) == 0  # one pass for every holder
        found = [(int(np.argmax(idle[:, j])), m, self.name(key))
                 for j, (m, key) in enumerate(pairs) if idle[:, j].any()]
        if not found:
            return None
        w, m, site = min(found)
        return m, site, w

    def holds(self, key: str, rows: np.ndarray) -> np.ndarray:
        """Whether site ``key`` holds each of the aligned ``rows`` (in ``[0, n)``)."""
        return self._holds[key][rows]

    def held_of(self, key: str, rows: np.ndarray) -> np.ndarray:
        """The ones of aligned ``rows`` (sorted, distinct) site ``key`` holds, in
        order: ``np.intersect1d(rows, held)`` without sorting all held rows again,
        which the server does for every site twice a window."""
        return rows[self.holds(key, rows)]

    def attach_request(self, key: str, *, float16: bool, delta_tol: float | None,
                       peers: bool) -> AttachRequest:
        """The attach message for site ``key``; ``peers`` adds the rows it shares with
        every other site (secure mode seals posteriors to peers directly)."""
        site = self.sites[key]
        shared = {m: sorted(self.name(h) for h in hs) for m, hs in self.shared.items()
                  if key in hs}
        modalities, rows = self._peers(key) if peers else ({}, {})
        return AttachRequest(n=self.n, rows=site.rows.tolist(), float16=float16,
                             plan=self.plan_args.to_dict(), shared=shared,
                             peers=modalities, peer_rows=rows,
                             delta_tol=-1.0 if delta_tol is None else float(delta_tol))

    def shares_rows(self, a: str, b: str) -> bool:
        """Whether sites ``a`` and ``b`` hold an aligned row in common (peers)."""
        return bool(len(np.intersect1d(self.sites[a].held, self.sites[b].held)))

    def _peers(self, key: str) -> tuple[dict[str, dict], dict[str, bytes]]:
        """Per other site sharing rows with ``key``: its modalities, and the shared
        rows as sorted little-endian uint32 bytes."""
        site, modalities, rows = self.sites[key], {}, {}
        for other, o in self.sites.items():
            both = np.intersect1d(site.held, o.held) if other != key else ()
            if len(both):
                modalities[o.name] = {"modalities": list(o.modalities)}
                rows[o.name] = np.asarray(both, dtype="<u4").tobytes()
        return modalities, rows

    def route(self, index: int, table: Mapping[str, Posteriors]) -> dict[str, dict]:
        """Per site: the other modalities' posteriors for its rows of window ``index``."""
        wanted = self.window_rows(index)
        return {key: select_rows(table, self.held_of(key, wanted), exclude=site.modalities)
                for key, site in self.sites.items()}

    def weights_for(self, key: str, averaged: Mapping[str, dict]) -> dict:
        """The averaged weights of the modalities site ``key`` holds."""
        return {m: a for m, a in averaged.items() if m in self.sites[key].modalities}

    def fedavg(self, weights: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
               screened: bool = False) -> dict[str, dict[str, np.ndarray]]:
        """``weights[site key][modality]`` -> the sample-weighted mean per shared
        modality; ``screened``: every array already passed :meth:`check_weights`."""
        out = {}
        for m, keys in self.shared.items():
            got = [k for k in keys if m in weights.get(k, {})]
            if not got:
                continue
            names = sorted(weights[got[0]][m])
            first = weights[got[0]][m]
            for k in () if screened else got:
                self.check_weights(k, m, weights[k][m])
            counts = np.array([len(self.sites[k].held) for k in got], dtype=np.float64)
            if counts.sum() <= 0:
                raise FederationError(f"no site that sent weights of {m!r} holds a sample")
            frac = counts / counts.sum()
            out[m] = {n: sum(f * weights[k][m][n].astype(np.float64)
                             for k, f in zip(got, frac, strict=True)).astype(first[n].dtype)
                      for n in names}
        return out

    def expect_shapes(self, shapes: Mapping[str, Mapping[str, tuple]]) -> None:
        """Each modality's parameter shapes, from the experiment's model (without them,
        the first weights a site sends of a modality are the reference)."""
        self._shapes.update({m: {n: tuple(v) for n, v in s.items()}
                             for m, s in shapes.items()})

    def model_shapes(self, m: str) -> Mapping[str, tuple] | None:
        """The parameter shapes of modality ``m``'s model, where known."""
        return self._shapes.get(m)

    def check_weights(self, key: str, m: str, arrays: Mapping[str, np.ndarray]) -> None:
        """One site's weights of ``m``: the parameters and shapes of the modality's
        model, floating point and finite; else the error names it."""
        site = self.name(key)
        if not isinstance(arrays, Mapping) or not arrays:
            raise FederationError(f"site {site} sent no parameters of {m!r}")
        shapes = self._shapes.setdefault(m, {n: a.shape for n, a in arrays.items()})
        if sorted(arrays) != sorted(shapes) or any(
                arrays[n].shape != shapes[n] for n in shapes):
            raise FederationError(f"site {site} sent weights of {m!r} with other "
                                  f"parameters or shapes than the modality's model")
        for n, a in arrays.items():
            if a.dtype not in FLOATS:
                raise FederationError(f"site {site} sent weights {m}/{n} of dtype "
                                      f"{a.dtype}; expected float16, float32 or float64")
            if not np.isfinite(a).all():
                raise FederationError(f"site {site} sent non-finite weights {m}/{n}")
            if np.abs(a).max(initial=0.0) > CLIP:
                raise FederationError(f"site {site} sent weights {m}/{n} beyond "
                                      f"+-{CLIP:g}, which secure mode could not carry "
                                      f"either (honest weights stay far inside)")
