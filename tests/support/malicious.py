"""The server's side of an attack: sealed hybrid sites, transports that tamper with
the attach requests or keep everything the server sees, and the sketch rows a server
colluding with a co-holder can put beside a mean of its own."""

from __future__ import annotations

import numpy as np

from mmvm.federation.local import LocalTransport
from mmvm.federation.messages import SKETCH, SKETCH_WINDOW, model_arrays
from mmvm.secure import sketch
from mmvm.secure.session import unb64
from tests.support.federate import make_sites, sealed_endpoints, site_keys, split


def hybrid_sites(cfg, tmp_path, data_root, policy=None, shards=3):
    """Hybrid-layout sites with keys, behind sealed endpoints: (sites, keys, endpoints)."""
    specs, root = split(data_root, tmp_path, "hybrid", shards=shards)
    sites = make_sites(cfg, specs, root)
    keys = site_keys(sites)
    return sites, keys, sealed_endpoints(sites, keys, tmp_path / "state", policy)


def forged(endpoint, weights: dict) -> dict:
    """``weights`` (a "mean" of the server's) with the sketch rows that ``endpoint``'s
    site checks, made with its group keys and said to be of the last window whose mean
    it took: what a server colluding with one of its co-holders (who holds the
    group's keys) can send, so that the site's other defences are what is tested."""
    sec = endpoint.channel.sec
    out = {}
    for m, arrays in weights.items():
        g, mean = sec.state["groups"].get(m), model_arrays(arrays)
        if g is None:
            out[m] = dict(arrays)
            continue
        window = endpoint.site.progress.means.get(m, [0])[0]
        key = sketch.group_key(unb64(sec.state["sketch"]["key"]), g["label"])
        rows = np.zeros((len(g["holders"]), sketch.ROWS))
        rows[g["holders"].index(sec.site)] = sketch.rows(key, window,
                                                         [mean[n] for n in sorted(mean)])
        out[m] = {**mean, SKETCH: rows, SKETCH_WINDOW: np.array([float(window), 1.0])}
    return out


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


class StopAfterWindow0(LocalTransport):
    """A server that stops (raises) once the sites answered window 0: their state is
    then that of a run attached and one window in, to continue or tamper with."""

    def exchange(self, requests, wait=None, need=1):
        replies = super().exchange(requests, wait, need)
        if next(iter(requests.values())).kind == "window":
            raise RuntimeError("the server stops after window 0")
        return replies
