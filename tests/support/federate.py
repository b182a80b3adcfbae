"""In-process federations for tests: real sites, endpoints and round loop, no network.

``split(cfg_root, tmp, layout)`` writes the site files of a layout once;
``plain_endpoints`` / ``sealed_endpoints`` build one :class:`Endpoint` per site;
``federate`` runs the loop over a :class:`LocalTransport` (optionally wrapped, e.g.
by an attacker) and returns the result and the sites.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmvm.data.sites import site_layout, split_sites
from mmvm.federation.channel import PlainChannel
from mmvm.federation.endpoint import Endpoint
from mmvm.federation.local import LocalTransport
from mmvm.federation.loop import run_federation
from mmvm.federation.policy import SitePolicy
from mmvm.federation.sealed_channel import SealedChannel
from mmvm.federation.settings import settings_for
from mmvm.federation.site import Site
from mmvm.secure.keys import SiteKeys
from mmvm.secure.session import SiteSecrets

MODALITIES = ["m0", "m1", "m2"]
RUN = "77"


def split(data_root: Path, out: Path, layout: str, missing: float = 0.0, shards: int = 2):
    """Site specs of ``layout`` and the folder of their files (train and test)."""
    specs = site_layout(layout, MODALITIES, shards)
    root = out / f"sites-{layout}-{missing}-{shards}"
    if not root.exists():
        split_sites([data_root / "train.parquet", data_root / "test.parquet"], root, specs,
                    missing=missing)
    return specs, root


def make_sites(cfg, specs, root: Path) -> dict[str, Site]:
    return {f"n{i}": Site(cfg, s.name, root / s.name / "train.parquet",
                          root / s.name / "test.parquet") for i, s in enumerate(specs)}


def plain_endpoints(sites: dict[str, Site]) -> dict[str, Endpoint]:
    return {k: Endpoint(s, PlainChannel()) for k, s in sites.items()}


def site_keys(sites: dict[str, Site]) -> dict[str, SiteKeys]:
    return {s.name: SiteKeys.generate(s.name) for s in sites.values()}


def secrets(site: Site, keys: dict[str, SiteKeys], state: Path) -> SiteSecrets:
    """A fresh session from disk (as a new SuperNode process would load it), kept
    as a deployed site keeps it: in ``state/run-<id>``."""
    directory = {n: k.public for n, k in keys.items()}
    return SiteSecrets(keys[site.name], directory, RUN, state / f"run-{RUN}")


def sealed_endpoints(sites: dict[str, Site], keys: dict[str, SiteKeys], state: Path,
                     policy: SitePolicy | None = None, align: str = "pseudonym"
                     ) -> dict[str, Endpoint]:
    return {k: Endpoint(s, SealedChannel(secrets(s, keys, state), policy, align), policy)
            for k, s in sites.items()}


def federate(cfg, endpoints: dict[str, Endpoint], transport=None, **settings):
    """Run the round loop in-process; ``settings`` override the app's run config
    (underscores for dashes), e.g. ``exchange="step"``, ``secure=True``; the
    cross-site evaluation is off unless asked (``cross_eval="draw"``, settings_for)."""
    settings.setdefault("float16", False)
    transport = transport or LocalTransport(endpoints)
    return run_federation(transport, settings_for(cfg, **settings))


def params(sites) -> dict[str, np.ndarray]:
    """Every parameter of every site, by its centralized name."""
    out = {}
    for site in sites:
        for m in site.names:
            out.update(site.weights(m))
    return out


class Tampering(LocalTransport):
    """Local endpoints whose replies ``alter(requests, replies)`` may change in place
    before the server reads them: a hostile site, or a hostile wire."""

    def __init__(self, endpoints, alter) -> None:
        super().__init__(endpoints)
        self.alter = alter

    def exchange(self, requests, wait=None, need=1):
        out = super().exchange(requests, wait, need)
        self.alter(requests, out)
        return out


def restarted(cfg, sites: dict[str, Site], tmp_path) -> dict[str, Site]:
    """Each site saved and loaded into a fresh Site, as a restarted process does."""
    out = {}
    for key, site in sites.items():
        path = tmp_path / "sites" / f"{site.name}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        site.save(path)
        fresh = Site(cfg, site.name, site.train_path, site.test_path)
        fresh.restore(path)
        out[key] = fresh
    return out


def cross_run(cfg, data_root: Path, tmp: Path, layout: str = "vertical",
              policies: dict[str, SitePolicy] | None = None, alter=None, **settings):
    """A plaintext run of ``layout`` ending in the cross-site evaluation
    (``cross_eval="mean"``, exact windows, unless ``settings`` say otherwise).
    ``policies``: a site's node-config policy by name (default: no label column
    allowed, so no judge trains); ``alter(site name, reply)``: what a hostile site or
    wire does to each reply before the server reads it (the reply replaced by what
    it returns, if anything)."""
    specs, root = split(data_root, tmp, layout)
    sites = make_sites(cfg, specs, root)
    quiet = SitePolicy(eval_labels=())
    endpoints = {k: Endpoint(s, PlainChannel(), (policies or {}).get(s.name, quiet))
                 for k, s in sites.items()}

    def hostile(requests, replies):
        for key in list(replies):
            replaced = alter(sites[key].name, replies[key])
            if replaced is not None:
                replies[key] = replaced

    settings = {"cross_eval": "mean", "exchange": "step", **settings}
    return federate(cfg, endpoints, Tampering(endpoints, hostile) if alter else None,
                    **settings)


class Spoiler(LocalTransport):
    """Keeps every window request and reply by (window, site key) and hands the round
    loop ``spoil(window, key, reply)``'s version of each reply."""

    def __init__(self, endpoints, spoil=lambda w, k, r: r):
        super().__init__(endpoints)
        self.spoil, self.requests, self.replies = spoil, {}, {}

    def exchange(self, requests, wait=None, need=1):
        replies = super().exchange(requests, wait, need)
        for k, r in requests.items():
            if r.kind == "window":
                self.requests[r.window, k] = r
                if k in replies:
                    self.replies[r.window, k] = replies[k]
                    replies[k] = self.spoil(r.window, k, replies[k])
        return replies


def failing(monkeypatch, site, windows, error: Exception | None = None):
    """``site`` raises ``error`` when it trains one of ``windows`` (nothing applied)."""
    train = site.train_window

    def train_window(index, others):
        if index in windows:
            raise error or RuntimeError("CUDA out of memory")
        return train(index, others)

    monkeypatch.setattr(site, "train_window", train_window)
