"""A secure site loads the server's mean of shared weights only if it is the holders'
mean (:mod:`mmvm.secure.sketch`, :mod:`mmvm.federation.sealed_sketch`).

Real sealed endpoints and the real round loop in one process; the tests play the
server. Without a co-holder on its side, the server can send no other mean: one it
changed, scaled or relabelled is refused before the window records anything, and
one it withholds a key to make unverifiable fails the check too; after a mean
that fails, the site takes no other. An honest run carries the sketches and their
keys, and no message holds a key in the clear.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import numpy as np
import pytest

from mmvm.federation.coordinator import FederationError, SiteInfo
from mmvm.federation.local import LocalTransport
from mmvm.federation.messages import KIND_SKETCH, SKETCH, SKETCH_WINDOW, model_arrays
from mmvm.federation.sealed_sketch import KEY_COUNTER, KEY_ROUND, sketch_rows
from mmvm.federation.server_state import ServerState, rekey
from mmvm.secure import sketch
from mmvm.secure.envelope import seal
from mmvm.secure.errors import SecurityError
from mmvm.secure.keys import SiteKeys
from mmvm.secure.session import SiteSecrets, b64, unb64
from tests.support.federate import RUN, federate
from tests.support.malicious import Recorder, hybrid_sites


def _bytes_of(value) -> Iterator[bytes]:
    """Every byte string a message holds (envelopes, arrays, texts), recursively."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _bytes_of(getattr(value, f.name))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _bytes_of(k)
            yield from _bytes_of(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _bytes_of(v)
    elif isinstance(value, bytes):
        yield value
    elif isinstance(value, np.ndarray):
        yield value.tobytes()
    elif isinstance(value, str):
        yield value.encode()


def _holders(sites, m: str = "m0") -> list[str]:
    return [k for k, s in sites.items() if m in s.names]


def test_an_honest_run_carries_sketches_and_no_key_in_the_clear(cfg, tmp_path,
                                                                 tiny_polymnist):
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    server = Recorder(endpoints)
    result = federate(cfg, {}, transport=server, secure=True, exchange="step")
    assert len(result.history) == 3
    holders = _holders(sites)
    own = {sites[k].name: unb64(endpoints[k].channel.sec.state["sketch"]["key"])
           for k in holders}
    label = endpoints[holders[0]].channel.sec.state["groups"]["m0"]["label"]
    group = {n: sketch.group_key(key, label) for n, key in own.items()}
    for k in holders:  # each holder has each co-holder's key of m0's group, and only it
        peers = endpoints[k].channel.sec.state["sketch"]["peers"]
        assert peers == {n: {"m0": b64(key)} for n, key in group.items()
                         if n != sites[k].name}
    means = [(r.window, r.weights["m0"]) for kind, requests, _ in server.log
             if kind == "window" for r in requests.values() if "m0" in r.weights]
    assert [w for w, _ in means] and all(  # every mean: rows of each holder, its window
        mean[SKETCH].shape == (len(holders), 8) and mean[SKETCH_WINDOW][0] == w - 1
        for w, mean in means)
    keys = [*own.values(), *group.values()]
    secret = keys + [b64(key).encode() for key in keys]
    seen = [b for _, requests, replies in server.log
            for message in [*requests.values(), *replies.values()] for b in _bytes_of(message)]
    assert not [s for s in secret if any(s in b for b in seen)]


def _tampered(mean: dict, how: str) -> dict:
    params = model_arrays(mean)
    first = sorted(params)[0]
    if how == "nudged":  # one parameter's first value moved by 0.01
        nudged = params[first].copy()
        nudged.flat[0] += 0.01
        return {**mean, first: nudged}
    if how == "scaled":  # mean and rows by the same factor
        return {**{n: (a * 1.01).astype(a.dtype) for n, a in params.items()},
                SKETCH: mean[SKETCH] * 1.01, SKETCH_WINDOW: mean[SKETCH_WINDOW]}
    return {**mean, SKETCH_WINDOW: mean[SKETCH_WINDOW] + [1, 0]}  # "relabelled"


class Stop(Exception):
    """The test's server has seen what it came for."""


@pytest.mark.parametrize("how", ["nudged", "scaled", "relabelled"])
def test_a_mean_the_server_changed_is_refused_and_no_other_taken(cfg, tmp_path,
                                                                 tiny_polymnist, how):
    """At window 3 of 3 the server sends a holder another version of the mean: it is
    refused with the weights untouched, and so is every mean after it, the true one
    too (tries with other rows, each answered pass or fail, would tell the server
    the site's projections one bit at a time)."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    victim = _holders(sites)[0]
    refused: list[str] = []

    class Server(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            r = requests.get(victim)
            if r is not None and r.kind == "window" and r.window == 2:
                before = sites[victim].shared_weights("m0")
                probe = dataclasses.replace(
                    r, weights={**r.weights, "m0": _tampered(r.weights["m0"], how)})
                for request in (probe, r):
                    with pytest.raises(SecurityError) as err:
                        self.endpoints[victim].handle(request)
                    refused.append(str(err.value))
                after = sites[victim].shared_weights("m0")
                assert all(np.array_equal(after[n], before[n]) for n in before)
                raise Stop
            return super().exchange(requests, wait, need)

    with pytest.raises(Stop):
        federate(cfg, {}, transport=Server(endpoints), secure=True, exchange="step")
    name = sites[victim].name
    assert refused[0] == (
        f"site {name}: the server's mean of 'm0' (window "
        f"{3 if how == 'relabelled' else 2}) is not the mean its holders sent: its "
        f"sketch does not match (the server changed it, or a co-holder sketched other "
        f"weights than it masked); nothing was loaded, and the site takes no other "
        f"mean of this run")
    assert refused[1].startswith(f"site {name}: it found a mean of the server that was "
                                 f"not its holders' ('m0', window ")


def test_a_mean_without_rows_or_older_than_the_last_taken_is_refused(cfg, tmp_path,
                                                                     tiny_polymnist):
    """Neither says anything of the site's projections, so neither is final: the
    window's mean without its rows is refused, then the true one trains; at the
    evaluation the mean of window 1 (the true one, kept from window 2's request) is
    refused as a rollback, then the last window's is taken."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    victim = _holders(sites)[0]
    refused, old = {}, {}

    class Server(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            r = requests.get(victim)
            if r is not None and r.kind == "window" and r.window == 1:
                old.update(r.weights)  # window 1's mean (window index 0)
            if r is not None and r.kind == "window" and r.window == 2:
                stripped = {**r.weights, "m0": model_arrays(r.weights["m0"])}
                with pytest.raises(SecurityError) as err:
                    self.endpoints[victim].handle(dataclasses.replace(r, weights=stripped))
                refused["stripped"] = str(err.value)
            if r is not None and r.kind == "evaluate":
                with pytest.raises(SecurityError) as err:
                    self.endpoints[victim].handle(dataclasses.replace(r, weights=old))
                refused["older"] = str(err.value)
            return super().exchange(requests, wait, need)

    result = federate(cfg, {}, transport=Server(endpoints), secure=True, exchange="step")
    assert len(result.history) == 3 and not result.history[-1]["missed"]
    assert sites[victim].name in {e["site"] for e in result.evaluation.values()}
    assert "comes with no sketch rows" in refused["stripped"]
    assert "is of window 1, and the site took the mean of window 2 already" in \
        refused["older"]


def test_a_key_the_server_withholds_stops_the_co_holder_from_masking(cfg, tmp_path,
                                                                    tiny_polymnist):
    """Kept from a co-holder, a holder's key is not a way around its check: without
    every holder's key a site masks nothing, and says whose it lacks."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    victim, other = _holders(sites)[:2]
    name = sites[victim].name

    class Server(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            r = requests.get(other)
            if r is not None and r.kind == "window":
                kept = {s: b for s, b in r.keys.items() if s != name}
                requests = {**requests, other: dataclasses.replace(r, keys=kept)}
            return super().exchange(requests, wait, need)

    with pytest.raises((SecurityError, FederationError),
                       match=f"site {sites[other].name}: no sketch keys from \\['{name}'\\]"):
        federate(cfg, {}, transport=Server(endpoints), secure=True, exchange="step")


def test_a_co_holder_that_seals_two_holders_different_keys_unmasks_nothing(
        cfg, tmp_path, tiny_polymnist):
    """Were its co-holders a and b given different keys K1 and K2, a dishonest holder
    would read ``w_a (S1 - S2) x_a`` from its own averaged rows: a's weights apart
    from the mean (review of 2026-12-06). Each site's masks are bound to the keys it
    holds, so a's and b's do not cancel and nothing is unmasked."""
    sites, keys, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    liar, _, b = _holders(sites)[:3]
    me, to = sites[liar].name, sites[b].name

    class Liar(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            replies = super().exchange(requests, wait, need)
            if next(iter(requests.values())).kind == "attach":
                other = seal(keys[me], keys[to].public,
                             json.dumps({"m0": b64(sketch.new_key())}).encode(), run_id=RUN,
                             round=KEY_ROUND, counter=KEY_COUNTER, kind=KIND_SKETCH)
                replies[liar] = dataclasses.replace(
                    replies[liar], keys={**replies[liar].keys, to: other})
            return replies

    # (the unmasked sums are garbage: m0 is averaged in no window, each says why,
    # and the run goes on without its mean)
    result = federate(cfg, {}, transport=Liar(endpoints), secure=True, exchange="step")
    assert result.history and all(
        "masked FedAvg of 'm0'" in row.get("unaveraged_why", {}).get("m0", "")
        for row in result.history)


def test_a_state_without_a_sketch_key_says_to_start_a_new_run(tmp_path):
    """A run attached before sketches existed cannot be continued by this code."""
    keys = {n: SiteKeys.generate(n) for n in ("a", "b", "c")}
    sec = SiteSecrets(keys["a"], {n: k.public for n, k in keys.items()}, "9", tmp_path)
    sec.state["groups"] = {"m0": {"holders": ["a", "b", "c"], "label": "weights/m0/x"}}
    with pytest.raises(SecurityError, match="has no sketch key .* start a new run"):
        sketch_rows(sec, "m0", 0, [np.zeros(3, dtype=np.float32)])


def test_the_total_weight_is_never_taken_below_the_sites_own(cfg, tmp_path,
                                                             tiny_polymnist):
    """A server that says the mean's total weight is 1 would widen the tolerance to
    a sample's rounding (a final review, 2026-12-06): of the window it unmasked, a
    site bounds the weight by its own sample count, so rows off by half of that
    wide tolerance are refused."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    victim = _holders(sites)[0]
    refused = []

    class Server(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            r = requests.get(victim)
            if r is not None and r.kind == "window" and r.window == 2:
                point = self.endpoints[victim]
                assert point.site.progress.unmasked == 1  # the mean's window
                mean = dict(r.weights["m0"])
                holders = point.channel.sec.state["groups"]["m0"]["holders"]
                params = model_arrays(mean)
                off = 0.5 * sketch.tolerance([params[n] for n in sorted(params)],
                                             len(holders), 1.0)
                rows = mean[SKETCH].copy()
                rows[holders.index(sites[victim].name)] += off
                mean.update({SKETCH: rows, SKETCH_WINDOW: np.array([1.0, 1.0])})
                with pytest.raises(SecurityError) as err:
                    point.handle(dataclasses.replace(r, weights={**r.weights, "m0": mean}))
                refused.append(str(err.value))
                raise Stop
            return super().exchange(requests, wait, need)

    with pytest.raises(Stop):
        federate(cfg, {}, transport=Server(endpoints), secure=True, exchange="step")
    assert "is not the mean its holders sent" in refused[0]


def test_a_site_back_under_another_node_id_still_gets_its_keys():
    """``rekey`` renames the routing state kept by node id, the sketch keys too (a
    site that still lacked a key would mask nothing after the restart)."""
    state = ServerState(window=3, sites=[SiteInfo("n1", "a", ["m0"], [])], averaged={},
                        routing={"inbox": {"n1": {}}, "keys": {"n1": {"b": b"k"}},
                                 "identities": {"n1": "x"}},
                        missed={}, absent=[], history=[], bytes_total=0, seconds=0.0,
                        alignment={})
    moved = rekey(state, {"n1": "n9"}).routing
    assert moved["keys"] == {"n9": {"b": b"k"}} and moved["inbox"] == {"n9": {}}
    assert moved["identities"] == {"n1": "x"}  # keyed by site name: left as it is
