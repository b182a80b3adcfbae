"""Site-side request handling shared by the Flower ClientApp and in-process runs.

Each function takes a :class:`~mmvm.federation.site.Site` and a request dict (what the
server sent) and returns the reply dict; ``LocalTransport`` wires them to
:func:`mmvm.federation.driver.run_federation` without a network.
"""

from __future__ import annotations

from collections.abc import Mapping

from mmvm.federation.posteriors import decode_table, encode_table
from mmvm.federation.site import Site, evaluate_site


def describe(site: Site) -> dict:
    return site.describe()


def attach(site: Site, req: Mapping) -> dict:
    site.attach(list(req["sample_ids"]), dict(req["plan"]))
    site.float16 = bool(req.get("float16", False))
    site.shared = list(req.get("shared", []))
    tol = req.get("delta_tol", -1.0)
    site.delta_tol = float(tol) if tol is not None and float(tol) >= 0 else None
    return {"posteriors": encode_table(_outgoing(site, site.window_ids(0)), site.float16)}


def _outgoing(site: Site, ids: list[str]):
    """Own posteriors for ``ids``; with event-triggered exchange only rows that moved."""
    table = site.encode(ids)
    if site.delta_tol is None:
        return table
    return site.sent_cache.changed(table, site.delta_tol)


def _incoming(site: Site, index: int, others):
    """Others' posteriors for window ``index``: as sent, or merged into the site's cache."""
    if site.delta_tol is None:
        return others
    site.others_cache.update(others)
    return site.others_cache.table(site.window_ids(index), exclude=site.names)


def window(site: Site, req: Mapping) -> dict:
    for arrays in req.get("weights", {}).values():
        site.load_weights(arrays)
    others = decode_table(req["others"], latent_dim=site.model.latent_dim, sender="server")
    index = int(req["window"])
    metrics = site.train_window(index, _incoming(site, index, others))
    reply = {"metrics": metrics,
             "posteriors": encode_table(_outgoing(site, site.window_ids(index + 1)),
                                        site.float16)}
    shared = [m for m in site.shared if m in site.names]
    if shared:
        reply["weights"] = {m: site.weights(m) for m in shared}
    return reply


def evaluate(site: Site, req: Mapping) -> dict:
    for arrays in req.get("weights", {}).values():
        site.load_weights(arrays)
    out = evaluate_site(site)
    if req.get("collect"):
        out["model"] = {m: site.weights(m) for m in site.names}
    return out


class LocalTransport:
    """Drive :class:`Site` objects in this process (tests, benchmarks)."""

    def __init__(self, sites: Mapping[str, Site]) -> None:
        self.sites = dict(sites)

    def describe(self) -> list[dict]:
        return [{"key": k, **describe(s)} for k, s in self.sites.items()]

    def attach(self, requests: Mapping[str, dict]) -> dict[str, dict]:
        return {k: attach(self.sites[k], r) for k, r in requests.items()}

    def window(self, requests: Mapping[str, dict]) -> dict[str, dict]:
        return {k: window(self.sites[k], r) for k, r in requests.items()}

    def evaluate(self, requests: Mapping[str, dict]) -> dict[str, dict]:
        return {k: evaluate(self.sites[k], r) for k, r in requests.items()}
