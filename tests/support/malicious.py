"""The server's side of an attack: sealed hybrid sites, and transports that tamper
with the attach requests or keep everything the server sees."""

from __future__ import annotations

from mmvm.federation.local import LocalTransport
from tests.support.federate import make_sites, sealed_endpoints, site_keys, split


def hybrid_sites(cfg, tmp_path, data_root, policy=None, shards=3):
    """Hybrid-layout sites with keys, behind sealed endpoints: (sites, keys, endpoints)."""
    specs, root = split(data_root, tmp_path, "hybrid", shards=shards)
    sites = make_sites(cfg, specs, root)
    keys = site_keys(sites)
    return sites, keys, sealed_endpoints(sites, keys, tmp_path / "state", policy)


class AttachTamper(LocalTransport):
    """Changes every attach request (``change(request) -> request``) on its way."""

    def __init__(self, endpoints, change):
        super().__init__(endpoints)
        self.change = change

    def exchange(self, requests, wait=None, need=1):
        if next(iter(requests.values())).kind == "attach":
            requests = {k: self.change(r) for k, r in requests.items()}
        return super().exchange(requests, wait, need)


class Recorder(LocalTransport):
    """Keeps every request and reply (the server's view), by kind."""

    def __init__(self, endpoints):
        super().__init__(endpoints)
        self.log: list[tuple[str, dict, dict]] = []

    def exchange(self, requests, wait=None, need=1):
        replies = super().exchange(requests, wait, need)
        self.log.append((next(iter(requests.values())).kind, requests, replies))
        return replies
