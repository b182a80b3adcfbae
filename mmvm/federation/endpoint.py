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
    return {"posteriors": encode_table(site.encode(site.window_ids(0)), site.float16)}


def window(site: Site, req: Mapping) -> dict:
    for arrays in req.get("weights", {}).values():
        site.load_weights(arrays)
    others = decode_table(req["others"], latent_dim=site.model.latent_dim, sender="server")
    index = int(req["window"])
    metrics = site.train_window(index, others)
    reply = {"metrics": metrics,
             "posteriors": encode_table(site.encode(site.window_ids(index + 1)),
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
