"""Secure mode in one process: routing, exactness, rejection.

The sealed protocol must train exactly like the plaintext one (with pseudonyms
replaced by the ids themselves, the row order is the same), the server-side messages
must hold neither ids nor plaintext posterior tables, and a tampered, replayed or
missing envelope must stop a site before it applies anything.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from flwr.common.serde import recorddict_to_proto

from mmvm.federation import sealed_align, sealed_channel
from mmvm.federation.coordinator import FederationError
from mmvm.federation.local import LocalTransport
from mmvm.federation.messages import AlignRequest, DescribeRequest
from mmvm.federation.posteriors import decode_table
from mmvm.federation.sealed_routing import route
from mmvm.secure.envelope import open_envelope, peek_header, seal
from mmvm.secure.errors import ReplayError, SecurityError, TamperedEnvelopeError
from mmvm.secure.keys import SiteKeys
from mmvm.secure.session import UnknownSiteError
from tests.support.audit_app import blobs_in
from tests.support.federate import (
    RUN,
    federate,
    make_sites,
    params,
    plain_endpoints,
    sealed_endpoints,
    secrets,
    site_keys,
    split,
)
from wire.records import to_record


@pytest.fixture
def identity_pseudonyms(monkeypatch):
    """Pseudonym = id: the secure run then uses the plaintext run's row order."""
    monkeypatch.setattr(sealed_align, "pseudonym", lambda key, sid: sid)


def _secure_setup(cfg, tmp_path, data_root, layout="vertical", shards=3, policy=None):
    specs, root = split(data_root, tmp_path, layout, shards=shards)
    sites = make_sites(cfg, specs, root)
    keys = site_keys(sites)
    return sites, keys, sealed_endpoints(sites, keys, tmp_path / "state", policy)


@pytest.mark.parametrize("layout", ["vertical", "hybrid", "horizontal"])
def test_secure_equals_plaintext(cfg, tmp_path, tiny_polymnist, layout, identity_pseudonyms):
    """Same parameters as the plaintext federation: posteriors routed sealed per peer
    and, where sites share a modality, its weights averaged through masking."""
    specs, root = split(tiny_polymnist, tmp_path, layout, shards=3)
    plain = make_sites(cfg, specs, root)
    plain_res = federate(cfg, plain_endpoints(plain), exchange="step")
    sites, _, endpoints = _secure_setup(cfg, tmp_path, tiny_polymnist, layout)
    res = federate(cfg, endpoints, exchange="step", secure=True)
    assert len(res.history) == len(plain_res.history) == 3
    a, b = params(plain.values()), params(sites.values())
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    # vertical: bit-identical math; shared modalities: masked FedAvg in 2^-24 fixed point
    assert worst < (1e-7 if layout == "vertical" else 1e-5), worst
    for r0, r1 in zip(plain_res.history, res.history, strict=True):
        assert r0["rec_nll"] == pytest.approx(r1["rec_nll"], rel=1e-4)


class Recorder(LocalTransport):
    """Keeps every message the server sends and receives, in Flower's wire encoding
    (what a ServerApp would hold)."""

    def __init__(self, endpoints):
        super().__init__(endpoints)
        self.blobs: list[bytes] = []

    def exchange(self, requests, wait=None, need=1):
        replies = super().exchange(requests, wait, need)
        for m in (*requests.values(), *replies.values()):
            self.blobs.append(recorddict_to_proto(to_record(m)).SerializeToString())
        return replies


def _leaks(dump: bytes, ids: list[str]) -> list[str]:
    found = [i for i in ids if i.encode() in dump]
    return found + [m.decode() for m in (b"mmvm.modality", b"sample_id") if m in dump]


def test_server_sees_no_ids_and_no_posteriors(cfg, tmp_path, tiny_polymnist):
    specs, root = split(tiny_polymnist, tmp_path, "hybrid")
    plain = make_sites(cfg, specs, root)
    ids = plain["n0"].data.sample_ids
    # control: the plaintext protocol does carry ids and Arrow posterior tables
    rec = Recorder(plain_endpoints(plain))
    federate(cfg, {}, transport=rec)
    assert len(_leaks(b"".join(rec.blobs), ids)) > 10
    _, keys, endpoints = _secure_setup(cfg, tmp_path, tiny_polymnist, "hybrid")
    rec = Recorder(endpoints)
    federate(cfg, {}, transport=rec, secure=True)
    dump = b"".join(rec.blobs)
    assert _leaks(dump, ids) == []
    # open every envelope with the recipients' keys (the test knows them all): the
    # posterior values inside never appear in what the server handled
    opened = 0
    for body in rec.blobs:
        for blob in blobs_in(body):
            head = peek_header(blob)
            if head.kind != "posterior":
                continue
            payload = open_envelope(keys[head.recipient], keys[head.sender].public, blob,
                                    run_id=RUN, expected_round=head.round)
            for p in decode_table(payload).values():
                for row in p.mu[:5]:
                    assert row[:4].astype(np.float32).tobytes() not in dump
                    opened += 1
    assert opened > 0


class Evil(LocalTransport):
    """Lets ``attack`` change window 1's requests before they reach the sites."""

    def __init__(self, endpoints, attack):
        super().__init__(endpoints)
        self.attack, self.seen = attack, []

    def exchange(self, requests, wait=None, need=1):
        first = next(iter(requests.values()))
        if first.kind == "window":
            self.seen.append(requests)
            if first.window == 1:
                self.attack(requests, self.seen)
        return super().exchange(requests, wait, need)


def _snapshot(site):
    return site.windows_done, {k: v.clone() for k, v in site.model.state_dict().items()}


@pytest.mark.parametrize("attack,error", [("tamper", TamperedEnvelopeError),
                                          ("replay", ReplayError),
                                          ("drop", sealed_channel.MissingEnvelopeError)])
def test_attacks_are_rejected_before_anything_is_applied(cfg, tmp_path, tiny_polymnist,
                                                         attack, error):
    sites, keys, endpoints = _secure_setup(cfg, tmp_path, tiny_polymnist)
    victim = {}

    def act(requests, seen):
        key = sorted(requests)[0]
        sender = sorted(requests[key].posteriors)[0]
        victim.update(key=key, before=_snapshot(sites[key]))
        blobs = requests[key].posteriors
        if attack == "tamper":
            b = bytearray(blobs[sender])
            b[-1] ^= 1
            blobs[sender] = bytes(b)
        elif attack == "replay":  # window 0's envelope again
            blobs[sender] = seen[0][key].posteriors[sender]
        else:
            del blobs[sender]

    with pytest.raises(error) as info:
        federate(cfg, {}, transport=Evil(endpoints, act), secure=True, exchange="step")
    assert isinstance(info.value, SecurityError)
    site = sites[victim["key"]]
    done, before = victim["before"]
    assert site.windows_done == done == 1
    after = site.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the persisted guard did not record window 1 (round 2) of anyone
    fresh = secrets(site, keys, tmp_path / "state")
    assert max(fresh.guard.latest_round.values()) == 1


def test_replay_of_an_accepted_window_is_refused(cfg, tmp_path, tiny_polymnist):
    """The same window-0 message a second time (new process: guard from disk)."""
    sites, keys, endpoints = _secure_setup(cfg, tmp_path, tiny_polymnist)
    tap = Evil(endpoints, lambda requests, seen: None)
    federate(cfg, {}, transport=tap, secure=True, exchange="step")
    key = sorted(tap.seen[0])[0]
    fresh = sealed_channel.SealedChannel(secrets(sites[key], keys, tmp_path / "state"))
    with pytest.raises(ReplayError):
        fresh.incoming(sites[key], 0, tap.seen[0][key].posteriors)


def test_unknown_site_is_refused(cfg, tmp_path, tiny_polymnist):
    sites, keys, endpoints = _secure_setup(cfg, tmp_path, tiny_polymnist)
    ep = endpoints["n0"]
    ep.handle(DescribeRequest())
    me = keys[sites["n0"].name].public
    intruder = seal(SiteKeys.generate("mallory"), me, b"k" * 32, run_id=RUN, round=0,
                    kind="idkey")
    with pytest.raises(UnknownSiteError):
        ep.handle(AlignRequest(sealed={"mallory": intruder}))
    # a key not matching the directory entry: authentication fails
    other = sites["n1"].name
    forged = seal(SiteKeys.generate(other), me, b"k" * 32, run_id=RUN, round=0, kind="idkey")
    with pytest.raises(TamperedEnvelopeError):
        ep.handle(AlignRequest(sealed={other: forged}))


def test_pseudonyms_hide_ids_but_align(cfg, tmp_path, tiny_polymnist):
    sites, _, endpoints = _secure_setup(cfg, tmp_path, tiny_polymnist)
    t = LocalTransport(endpoints)
    described = t.exchange({k: DescribeRequest() for k in endpoints})
    names = {k: d.site for k, d in described.items()}
    inbox = route({k: d.sealed for k, d in described.items()}, names)
    counts = {d.site: d.n for d in described.values()}
    aligned = t.exchange({k: AlignRequest(sealed=inbox[k], counts=counts)
                          for k in described})
    ps = [set(r.identifiers) for r in aligned.values()]
    assert ps[0] == ps[1] == ps[2]  # vertical: every site holds every sample
    assert not set(sites["n0"].data.sample_ids) & ps[0]
    assert len({ep.channel.sec.state["group_key"] for ep in endpoints.values()}) == 1
    assert all(d.identifiers == [] for d in described.values())


def test_psi_alignment_matches_ids_across_sites_and_hides_them(cfg, tmp_path,
                                                              tiny_polymnist):
    """align = "psi": the ring of commutative ECDH gives the same id the same tag at
    every site (the union of 3 x 192 tags is 192 rows), no id reaches the server, and
    the federation trains. (The rows are ordered by tag, not by id, so the batches
    differ from a plaintext run's.)"""
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    keys = site_keys(sites)
    rec = Recorder(sealed_endpoints(sites, keys, tmp_path / "state-psi", align="psi"))
    res = federate(cfg, {}, transport=rec, secure=True, align="psi", exchange="step")
    assert all(s.link.n == 192 for s in sites.values())
    assert len(res.history) == 3 and all(np.isfinite(r["rec_nll"]) for r in res.history)
    assert _leaks(b"".join(rec.blobs), sites["n0"].data.sample_ids) == []
    assert all(s.progress.phase == "evaluated" for s in sites.values())


def test_a_plan_that_leaves_a_holder_idle_is_refused_by_the_server_first(
        cfg, tmp_path, tiny_polymnist):
    """Three sites hold m0, a third of the rows each; four-row steps leave one of them
    without rows in some window. Every holder would refuse that plan at attach (its
    weights would go back unchanged); the server says so first, naming the window,
    the site and what to use instead, and attaches no one. One epoch per window
    ("round") trains every holder in every window and runs."""
    small = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=4))
    sites, _, endpoints = _secure_setup(small, tmp_path, tiny_polymnist, "hybrid")
    with pytest.raises(FederationError, match=r"exchange plan: window \d+ trains none of "
                                              r"site-m0-\d's rows of 'm0'.*exchange = "
                                              r"\"round\".*nothing was attached"):
        federate(small, endpoints, exchange="step", secure=True)
    assert all(s.link is None for s in sites.values())
    sites, _, endpoints = _secure_setup(small, tmp_path / "round", tiny_polymnist,
                                        "hybrid")
    assert len(federate(small, endpoints, exchange="round", secure=True).history) == 1


def test_a_min_rows_above_the_sites_rows_is_refused_at_describe(tiny_polymnist, cfg,
                                                                  tmp_path):
    """A secure-mode walkthrough: a site whose min-rows (1000) was above its 54 rows
    was refused only at attach, after the PSI ring had carried its blinded ids, and
    told to use larger batches, which no plan could satisfy. Now at describe, before
    the run id is spent, naming the fix."""
    from mmvm.federation.policy import PolicyError, SitePolicy

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    endpoints = sealed_endpoints(sites, site_keys(sites), tmp_path / "state",
                                 SitePolicy(test_bed=True, min_rows=100_000), "psi")
    key, endpoint = next(iter(endpoints.items()))
    with pytest.raises(PolicyError, match="min-rows = 100000 is more than its .* "
                                          "training rows.*lower min-rows"):
        endpoint.handle(DescribeRequest())
    assert not list((tmp_path / "state").glob("*.secure-runs"))  # the run id unspent
