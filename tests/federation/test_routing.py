"""The routing seam on mock replies: what the server reads, forwards and averages.

No site, no network: replies are built by hand, as a site (or an attacker posing as
one) would send them."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mmvm.federation.coordinator import Coordinator, FederationError, SiteInfo
from mmvm.federation.delta import PosteriorCache
from mmvm.federation.envelope_checks import route
from mmvm.federation.messages import DescribeReply, UnmaskReply, WindowReply
from mmvm.federation.plan import PlanArgs
from mmvm.federation.posteriors import Posteriors, decode_table, encode_table
from mmvm.federation.routing import EventTriggeredRouting, PlainRouting
from mmvm.federation.sealed_routing import SealedRouting
from mmvm.secure.keys import SiteKeys
from mmvm.secure.masking import mask_update
from mmvm.secure.session import b64
from mmvm.secure.unmasking import new_seed, reveal, share_seed

D = 2


def _coord():
    """a: m0 of s0..s3; b: m1 of s0..s3; c: m1 of nothing else -> b, c disjoint shards."""
    sites = [SiteInfo("ka", "a", ["m0"], [f"s{i}" for i in range(4)]),
             SiteInfo("kb", "b", ["m1"], ["s0", "s1"]),
             SiteInfo("kc", "c", ["m1"], ["s2", "s3"])]
    return Coordinator(sites, ["m0", "m1"],
                       PlanArgs(batch_size=4, seed=0, epochs=2, exchange="step"))


def _post(rows, value):
    rows = np.asarray(rows)
    return Posteriors(rows, np.full((len(rows), D), value, np.float32),
                      np.zeros((len(rows), D), np.float32))


def _reply(table=None, weights=None, to="server"):
    blobs = {to: encode_table(table)} if table else {}
    return WindowReply(metrics={}, posteriors=blobs, weights=weights or {})


def _replies(value=1.0):
    return {"ka": _reply({"m0": _post(range(4), value)}),
            "kb": _reply({"m1": _post([0, 1], value + 1)}),
            "kc": _reply({"m1": _post([2, 3], value + 2)})}


def _others(req, key, coord=None):
    """What site ``key`` reads from its request (rows implied by its frame)."""
    frame = PlainRouting.frame(coord or _coord(), key, req.window)
    return decode_table(req.posteriors.get("server", b""), frame=frame)


def test_plain_routing_forwards_the_other_modalities_of_each_sites_rows():
    c, r = _coord(), PlainRouting(D, float16=False)
    r.receive(c, _replies())
    reqs = r.requests(c, 0, {})
    assert {k: q.window for k, q in reqs.items()} == {"ka": 0, "kb": 0, "kc": 0}
    a, b, cc = (_others(reqs[k], k) for k in ("ka", "kb", "kc"))
    assert list(a) == ["m1"] and a["m1"].rows.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(a["m1"].mu[:, 0], [2, 2, 3, 3])  # from b, then c
    assert list(b) == ["m0"] and b["m0"].rows.tolist() == [0, 1]
    assert cc["m0"].rows.tolist() == [2, 3]


@pytest.mark.parametrize("reply,match", [
    (_reply({"m1": _post([0], 1.0)}), r"site a sent posteriors for modalities \['m1'\]"),
    (_reply({"m0": _post([0], 1.0)}, to="b"), r"site a addressed posteriors to \['b'\]"),
    (_reply({"m0": _post([9], 1.0)}), r"row 9 is outside the 4 aligned rows"),
])
def test_plain_routing_refuses_what_a_site_cannot_send(reply, match):
    """The refused site's table is left out (as an away site's); the others' kept."""
    replies, r = {**_replies(), "ka": reply}, PlainRouting(D, False)
    refused = r.receive(_coord(), replies)
    assert list(refused) == ["ka"] and re.search(match, refused["ka"])
    assert sorted(r.table) == ["m1"] and r.table["m1"].rows.tolist() == [0, 1, 2, 3]


def test_a_site_cannot_report_rows_it_does_not_hold():
    replies = {**_replies(), "kb": _reply({"m1": _post([0, 2], 1.0)})}
    refused = PlainRouting(D, False).receive(_coord(), replies)
    assert list(refused) == ["kb"]
    assert "row 2 of 'm1', which it does not hold" in refused["kb"]


def test_fedavg_accepts_only_shared_weights():
    c, r = _coord(), PlainRouting(D, False)
    w = {"p": np.ones(2, np.float32)}
    out = r.aggregate(None, c, 0, {"ka": _reply(), "kb": _reply(weights={"m1": w}),
                                   "kc": _reply(weights={"m1": {"p": 3 * w["p"]}})})
    np.testing.assert_allclose(out["m1"]["p"], [2, 2])  # b and c hold 2 samples each
    refused = r.screen(c, {"ka": _reply(weights={"m0": w}), "kb": _reply(),
                           "kc": _reply(weights={"m1": {"p": np.full(2, np.nan, np.float32)}})},
                       0)
    assert sorted(refused) == ["ka", "kc"]
    assert re.search(r"site a sent weights of \['m0'\], which it does not share",
                     refused["ka"])
    assert "site c sent non-finite weights m1/p" in refused["kc"]


def test_event_triggered_routing_forwards_only_rows_that_changed():
    c, r = _coord(), EventTriggeredRouting(D, float16=False)
    r.receive(c, _replies(1.0))
    first = _others(r.requests(c, 0, {})["ka"], "ka")
    assert first["m1"].rows.tolist() == [0, 1, 2, 3]
    # b's rows change, c's do not: only b's rows travel to a again
    r.receive(c, {"ka": _reply(), "kb": _reply({"m1": _post([0, 1], 7.0)}), "kc": _reply()})
    again = _others(r.requests(c, 0, {})["ka"], "ka")
    assert again["m1"].rows.tolist() == [0, 1]
    np.testing.assert_array_equal(again["m1"].mu[:, 0], [7, 7])
    assert r.requests(c, 0, {})["ka"].posteriors == {}  # nothing new since


def test_sealed_route_moves_envelopes_to_their_recipients_unopened():
    names = {"ka": "a", "kb": "b", "kc": "c"}
    inbox = route({"ka": {"b": b"ab", "c": b"ac"}, "kb": {"a": b"ba"}, "kc": {}}, names)
    assert inbox == {"ka": {"b": b"ba"}, "kb": {"a": b"ab"}, "kc": {"a": b"ac"}}
    for bad in ({"ka": {"a": b"self"}}, {"ka": {"mallory": b"x"}}):
        with pytest.raises(FederationError, match="not another participant"):
            route(bad, names)


def test_sealed_routing_refuses_ids_in_secure_mode():
    described = {"ka": DescribeReply(site="a", modalities=["m0"], n=1, labelled=False,
                                     identifiers=["s0"])}
    with pytest.raises(FederationError, match=r"sites \['a'\] sent sample ids"):
        SealedRouting().align(None, described)


@pytest.mark.parametrize("reply,match", [
    (dict(n=11), r"site a: describes 11 samples \(0 ids\); the server takes 1 to "
                 r"max-site-rows = 10 per site"),
    (dict(n=0), r"describes 0 samples"),
    (dict(n=2, identifiers=[f"s{i}" for i in range(11)]), r"describes 2 samples \(11 ids"),
    (dict(n=1, identifiers=["x" * 257]), r"site a: a sample id of 257 characters"),
    (dict(n=1, identifiers=[""]), r"a sample id of 0 characters"),
    (dict(n=1, site="a\n" + "b" * 100), r"the SuperNode ka describes itself as invalid "
                                         r"site name"),
])
def test_the_server_refuses_a_description_beyond_its_limits(reply, match):
    """Checked before alignment builds sets and rows of a site's ids: a site cannot
    make the server hold millions of rows (or ids of any length) it did not agree to."""
    from mmvm.federation.routing import check_described

    d = DescribeReply(**{"site": "a", "modalities": ["m0"], "labelled": False, **reply})
    with pytest.raises(FederationError, match=match):
        check_described({"ka": d}, max_rows=10)
    check_described({"ka": DescribeReply(site="a", modalities=["m0"], n=10, labelled=False,
                                         identifiers=[f"s{i}" for i in range(10)])}, 10)


def test_a_modality_no_site_describes_is_named_with_what_each_holds_before_alignment():
    """Two hospitals whose folders both held the lateral view: the run failed with
    "no connected site holds modalities ['frontal']" only after the PSI had run."""
    from mmvm.federation.routing import check_described

    described = {k: DescribeReply(site=name, modalities=["lateral"], n=3, labelled=False)
                 for k, name in (("k2", "hospital-b"), ("k1", "hospital-a"))}
    with pytest.raises(FederationError, match=r"no connected site holds modalities "
                                              r"\['frontal'\] of the experiment; the "
                                              r"sites hold: hospital-a lateral; "
                                              r"hospital-b lateral \(a site's data"):
        check_described(described, 10, ["frontal", "lateral"])
    check_described(described, 10, ["lateral"])


def test_sealed_routing_pins_each_sites_public_key_record():
    keys = SiteKeys.generate("a")
    record = keys.public.to_bytes().decode()
    r = SealedRouting()
    with pytest.raises(FederationError, match="site a sent the public key record of 'b'"):
        r.align(None, {"ka": DescribeReply(site="a", modalities=["m0"], n=1, labelled=False,
                                           identity=SiteKeys.generate("b").public.to_bytes()
                                           .decode())})
    with pytest.raises(FederationError, match="site a sent no public key record"):
        r.align(None, {"ka": DescribeReply(site="a", modalities=["m0"], n=1,
                                           labelled=False)})
    assert r.state().get("identities", {}) == {}
    r.identities = {"a": record}
    again = SealedRouting()
    again.load(r.state())
    assert again.identities == {"a": record}


def _masked_round(c, holders=("b", "c"), claim_dropped=()):
    """b and c mask one array each (double masking); returns the window replies and a
    transport whose sites answer the unmask step as mmvm.secure.unmasking rules."""
    keys = {n: SiteKeys.generate(n) for n in holders}
    pubs = {n: k.public for n, k in keys.items()}
    w = {"b": np.array([1.0, -2.0], np.float32), "c": np.array([4.0, 0.5], np.float32)}
    replies, shares = {"ka": _reply()}, {}
    for k, n in (("kb", "b"), ("kc", "c")):
        seed = new_seed()
        masked = mask_update(keys[n], pubs, [w[n]], run_id="1", round=0, weight=2.0,
                             group="g", self_seed=seed)
        assert not np.allclose(masked[0], w[n])  # what the server sees is masked
        for peer, share in share_seed(seed, holders, n).items():
            shares.setdefault(peer, {})[n] = share
        other = "c" if n == "b" else "b"
        replies[k] = WindowReply(metrics={}, weights={"m1": {"p": masked[0],
                                                            "__weight__": masked[1]}},
                                 shares={other: b"sealed share"})

    class Sites:
        asked = []

        def exchange(self, requests, wait=None, need=1):
            out = {}
            for key, req in requests.items():
                me = {"kb": "b", "kc": "c"}[key]
                view = req.groups["m1"]
                self.asked.append((me, view))
                got, seeds = reveal(keys[me], pubs, holders, view["survivors"],
                                    view["dropped"], shares[me], run_id="1", round=0,
                                    group="g")
                out[key] = UnmaskReply(shares={"m1": {s: b64(v) for s, v in got.items()}},
                                       seeds={"m1": {d: b64(v) for d, v in seeds.items()}})
            return out

        def gather(self, requests):  # the unmask round: replies, failed sites
            return self.exchange(requests), {}

    return replies, Sites(), w


def test_masked_fedavg_equals_the_plain_weighted_mean():
    c = _coord()
    replies, sites, w = _masked_round(c)
    out = SealedRouting().aggregate(sites, c, 0, replies)
    np.testing.assert_allclose(out["m1"]["p"], (w["b"] + w["c"]) / 2, atol=1e-6)
    assert sorted(me for me, _ in sites.asked) == ["b", "c"]
    assert sites.asked[0][1] == {"survivors": ["b", "c"], "dropped": []}
    del replies["kc"].weights["m1"]  # c dropped out: one survivor of two cannot be
    assert SealedRouting().aggregate(sites, c, 0, replies) == {}  # unmasked safely


def test_masked_fedavg_refuses_a_total_weight_that_is_not_the_counts():
    """The server believes b holds 3 samples, not 2, or b added to its masked weight
    word: the unmasked total is not the survivors' count. The modality is not averaged
    this window and why is kept (that ended the run, naming no one, when one site's
    update was corrupt: review of a hostile site, 2026-12-07); the run goes on."""
    c = _coord()
    c.sites["kb"].held = np.arange(3)
    replies, sites, _ = _masked_round(c)
    routing = SealedRouting()
    assert routing.aggregate(sites, c, 0, replies) == {}
    assert routing.unaveraged == {"m1": "masked FedAvg of 'm1': total weight 4.000 is "
                                        "not the survivors' 5 samples; the sites' views "
                                        "of the group differ, or an update is corrupt"}
    assert routing.failed == {}  # the masks hide whose update it was: no one is named
    c = _coord()
    replies, sites, _ = _masked_round(c)
    word = replies["kb"].weights["m1"]["__weight__"]
    word += np.uint64(1 << 40)  # a corrupt update: the weight's ring element moved
    assert routing.aggregate(sites, c, 0, replies) == {} and "m1" in routing.unaveraged
    replies, sites, _ = _masked_round(c)  # the next window, honest again: averaged
    assert set(routing.aggregate(sites, c, 0, replies)) == {"m1"}
    assert routing.unaveraged == {}


def test_event_triggered_int8_forwards_increments_the_site_adds_to_its_values():
    sites = [SiteInfo("ka", "a", ["m0"], [f"s{i}" for i in range(4)]),
             SiteInfo("kb", "b", ["m1"], [f"s{i}" for i in range(4)])]
    c = Coordinator(sites, ["m0", "m1"], PlanArgs(batch_size=4, seed=0, epochs=2,
                                                  exchange="round", quantize="int8"))
    r, held = EventTriggeredRouting(D, float16=False), PosteriorCache()
    for value in (1.0, 1.3):
        r.receive(c, {"ka": _reply({"m0": _post(range(4), value)}), "kb": _reply()})
        req = r.requests(c, 0, {})["kb"]
        got = decode_table(req.posteriors["server"], frame=PlainRouting.frame(c, "kb", 0),
                           base=held.values)
        held.update(got)
        assert abs(got["m0"].mu - value).max() <= value / 127
    # the second time only increments travelled (and the site holds what the server
    # thinks it holds)
    assert held.values("m0", np.arange(4))[0].tolist() == \
        r.held["kb"].values("m0", np.arange(4))[0].tolist()
