"""A malicious server against sites that enforce their own policy.

Each test plays the server (a transport wrapper, or the requests it would send) and
tries one attack a review found against the earlier protocol; it must fail at the
site, before the site sends anything it protects.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from mmvm.federation.coordinator import FederationError
from mmvm.federation.endpoint import Endpoint
from mmvm.federation.local import LocalTransport
from mmvm.federation.messages import AlignRequest, AttachRequest, DescribeRequest
from mmvm.federation.policy import PolicyError, SitePolicy
from mmvm.federation.progress import ProtocolOrderError
from mmvm.federation.sealed_channel import SealedChannel
from mmvm.federation.site_store import SiteStore
from mmvm.secure.envelope import seal
from mmvm.secure.errors import SecurityError
from mmvm.secure.keys import SiteKeys
from mmvm.secure.session import UnknownSiteError
from tests.support.federate import (
    RUN,
    federate,
    make_sites,
    sealed_endpoints,
    secrets,
    site_keys,
    split,
)
from tests.support.malicious import AttachTamper, Recorder, hybrid_sites


def test_2a_groups_of_one_or_two_are_refused(cfg, tmp_path, tiny_polymnist):
    """Averaging over two sites would tell each the other's weights; over one site,
    its weights in the clear. Both are refused unless the site opts into pairs."""
    _, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist, shards=2)
    with pytest.raises(PolicyError, match="masking groups need >= 3 sites"):
        federate(cfg, endpoints, secure=True)
    pairs = SitePolicy(test_bed=True, allow_pair_masking=True)
    _, _, endpoints = hybrid_sites(cfg, tmp_path / "pairs", tiny_polymnist, pairs, shards=2)
    res = federate(cfg, endpoints, secure=True)
    assert len(res.history) == 1
    # a "group" of one: the server asks a holder to share m0 with itself alone
    sites, _, endpoints = hybrid_sites(cfg, tmp_path / "one", tiny_polymnist)
    victim, name = next((k, s.name) for k, s in sites.items() if "m0" in s.names)

    class Alone(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            if next(iter(requests.values())).kind == "attach":
                requests[victim] = dataclasses.replace(requests[victim],
                                                       shared={"m0": [name]})
            return super().exchange(requests, wait, need)

    with pytest.raises(FederationError, match="told to share modality 'm0'"):
        federate(cfg, {}, transport=Alone(endpoints), secure=True)
    assert sites[victim].link is None  # nothing was attached, nothing masked


def test_2b_a_site_is_never_attached_or_windowed_twice(cfg, tmp_path, tiny_polymnist):
    """The proof of concept: after window 0, re-attach a site with a plan whose
    window trains none of its rows, send it chosen weights, and subtract: the mask
    of window 0 would come out. Every step of that is refused, and the site sends
    no second masked update."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    rec = Recorder(endpoints)
    federate(cfg, {}, transport=rec, secure=True, exchange="step")
    attach = {k: r for kind, reqs, _ in rec.log if kind == "attach" for k, r in reqs.items()}
    window0 = {k: r for kind, reqs, _ in rec.log if kind == "window"
               for k, r in reqs.items() if r.window == 0}
    key = next(k for k, s in sites.items() if s.link.shared)  # a holder of m0
    ep, before = endpoints[key], sites[key].weights("m0")
    empty_plan = dict(attach[key].plan, epochs=1, batch_size=1)
    for attack in (lambda: ep.handle(dataclasses.replace(attach[key], plan=empty_plan)),
                   lambda: ep.handle(dataclasses.replace(window0[key],
                                                         weights={"m0": before})),
                   lambda: ep.handle(DescribeRequest()),
                   lambda: ep.handle(AlignRequest())):
        with pytest.raises(ProtocolOrderError, match="refused"):
            attack()
    after = sites[key].weights("m0")
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_2d_a_secure_runs_state_is_never_continued_in_plaintext(cfg, tmp_path,
                                                               tiny_polymnist):
    """A submitter's ``secure = false, resume = <secure run>`` reaches the secure
    run's state over a plain channel (a site whose node config does not require
    secure runs): its next window would send its weights unmasked, and a plaintext
    resume would roll it back to a snapshot to mask a window twice. The run's
    channel is bound to its state at describe; every later message over another
    one is refused, before anything is trained, rolled back or sent."""
    from mmvm.federation.channel import PlainChannel
    from mmvm.federation.messages import ResumeRequest, WindowRequest
    from tests.support.malicious import StopAfterWindow0

    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    with pytest.raises(RuntimeError, match="stops after window 0"):
        federate(cfg, {}, transport=StopAfterWindow0(endpoints), secure=True,
                 exchange="step")
    key = next(k for k, s in sites.items() if s.link.shared)  # a holder of m0
    site = sites[key]
    assert (site.progress.phase, site.progress.window) == ("attached", 0)
    assert site.progress.mode == "sealed/pseudonym"
    before = site.weights("m0")
    plain = Endpoint(site, PlainChannel())
    for attack in (WindowRequest(window=1), ResumeRequest(run=RUN, window=-1)):
        with pytest.raises(ProtocolOrderError, match=r"began over sealed/pseudonym; a "
                                                     r"message over plain is refused"):
            plain.handle(attack)
    after = site.weights("m0")
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert site.progress.window == 0


def test_2c_a_plan_that_singles_out_a_holder_or_a_sample_is_refused(cfg, tmp_path,
                                                                    tiny_polymnist):
    """The same plan to every holder (so the group labels agree), one row per step:
    in most windows all holders of m0 but one train nothing and send back the weights
    they got, and the masked mean is that one's weights, trained on one sample. Each
    holder refuses at attach; a listed holder twice does not make a group of three;
    and a site's min-rows keeps one-row windows from reporting one sample's loss."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    holders = [s.name for s in sites.values() if "m0" in s.names]

    def one_row(r):
        return dataclasses.replace(r, plan=dict(r.plan, batch_size=1))

    with pytest.raises(PolicyError, match="refuses this run's plan") as refused:
        federate(cfg, {}, transport=AttachTamper(endpoints, one_row), secure=True,
                 exchange="step")
    # why, with the counts, is the site's (its log keeps the cause), not the server's
    assert "single out another holder's weights" in str(refused.value.__cause__)
    assert "single out" not in str(refused.value)
    assert all(s.link is None for s in sites.values() if "m0" in s.names)

    def twice(r):
        return dataclasses.replace(r, shared={"m0": [*holders[:2], holders[1]]}) \
            if r.shared else r

    sites, _, endpoints = hybrid_sites(cfg, tmp_path / "twice", tiny_polymnist)
    with pytest.raises(FederationError, match="told to share modality 'm0'"):
        federate(cfg, {}, transport=AttachTamper(endpoints, twice), secure=True)
    # a site that shares nothing: two-row windows tell the sum of two samples' losses;
    # a site whose node config says min-rows = 3 refuses them (the default allows them)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    plain = make_sites(cfg, specs, root)
    endpoints = sealed_endpoints(plain, site_keys(plain), tmp_path / "v",
                                 SitePolicy(test_bed=True, min_rows=3))
    with pytest.raises(PolicyError, match=r"its min-rows = 3") as refused:
        federate(cfg, {}, transport=AttachTamper(endpoints, lambda r: dataclasses.replace(
            r, plan=dict(r.plan, batch_size=2))), secure=True, exchange="step")
    assert re.search(r"trains 2 of its rows in window 0 .*min-rows = 3\); use larger "
                     r"batches", str(refused.value.__cause__))


def test_2f_a_refused_plan_is_final_for_the_run_and_tells_no_counts(cfg, tmp_path,
                                                                    tiny_polymnist):
    """A server that could attach again after a refusal, with plans of its choice,
    would learn from each refusal's counts how many of the rows it put in a window
    lack a modality, and so whether one sample does. The refusal is written with the
    site's state: the next attach is refused whatever it asks, also by a new process
    that reads the state file, and the text the server gets holds no count."""
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    keys, policy = site_keys(sites), SitePolicy(test_bed=True, min_rows=3)
    stores = {k: SiteStore(tmp_path / "state" / f"{s.name}.pt") for k, s in sites.items()}
    endpoints = {k: Endpoint(s, SealedChannel(secrets(s, keys, tmp_path / "keys"), policy,
                                              "pseudonym"), policy, stores[k])
                 for k, s in sites.items()}
    with pytest.raises(PolicyError, match="refuses this run's plan") as refused:
        federate(cfg, {}, transport=AttachTamper(endpoints, lambda r: dataclasses.replace(
            r, plan=dict(r.plan, batch_size=2))), secure=True, exchange="step")
    again = next(k for k, s in sites.items() if s.progress.phase == "refused")
    text = str(refused.value).replace("min-rows = 3", "").replace(sites[again].name, "")
    assert not re.search(r"\d", text), text
    fresh, store = make_sites(cfg, specs, root)[again], SiteStore(stores[again].path)
    store.refresh(fresh)  # what a new ClientApp process finds
    assert fresh.progress.phase == "refused" and fresh.link is None
    endpoint = Endpoint(fresh, SealedChannel(secrets(fresh, keys, tmp_path / "keys"),
                                             policy, "pseudonym"), policy, store)
    with pytest.raises(ProtocolOrderError, match="attach refused: the site is 'refused'"):
        endpoint.handle(AttachRequest(n=1, rows=[0], float16=False, plan={}))


def test_3_pinned_peers_keep_an_added_directory_entry_out(cfg, tmp_path, tiny_polymnist):
    """The operator adds 'mallory' to the key directory. A site that pins its peers
    seals nothing to mallory and accepts nothing from her; without pins it would."""
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    keys = site_keys(sites)
    mallory = SiteKeys.generate("mallory")
    keys_with_mallory = {**keys, "mallory": mallory}
    site = sites["n0"]
    names = [s.name for s in sites.values()]
    pins = {n: keys[n].public.fingerprint for n in names if n != site.name}
    pinned = SitePolicy(peers=pins, keys="k", require_secure=True)
    ep = Endpoint(site, SealedChannel(secrets(site, keys_with_mallory, tmp_path / "s1"),
                                      pinned), pinned)
    described = ep.handle(DescribeRequest())
    assert sorted(described.sealed) == sorted(pins)  # no contribution to mallory
    blob = seal(mallory, keys[site.name].public, b"k" * 32, run_id=RUN, round=0,
                kind="idkey")
    # the text names both causes (an operator looking only at the directory file was
    # misled) and is the same for both (it reaches the server: no word on the pins)
    said = {}
    for name in ("mallory", "eve"):  # in the directory but not pinned / in neither
        with pytest.raises(UnknownSiteError) as info:
            ep.handle(AlignRequest(sealed={name: blob}))
        said[name] = str(info.value).replace(repr(name), "NAME")
    assert said["mallory"] == said["eve"]
    assert "not in its public key directory, or not among the peers its node config " \
           "pins (peers=)" in said["eve"]
    # control: trusting the whole directory seals the group key's input to mallory
    site2 = make_sites(cfg, specs, root)["n0"]
    loose = Endpoint(site2, SealedChannel(secrets(site2, keys_with_mallory, tmp_path / "s2")))
    assert "mallory" in loose.handle(DescribeRequest()).sealed
    # the operator substitutes a peer's key: a pinned site refuses to start
    forged = {**keys, names[1]: SiteKeys.generate(names[1])}
    with pytest.raises(PolicyError, match="not the pinned"):
        SealedChannel(secrets(site, forged, tmp_path / "s3"), pinned)


def test_2e_a_secure_run_whose_state_was_lost_cannot_begin_again(cfg, tmp_path,
                                                                 tiny_polymnist):
    """Masks and envelope keys derive from the run id. Were a site's run folder
    lost, a server could replay the run under the same id (resume = <id>) and,
    claiming other dropouts, unmask an earlier window: the site remembers every
    secure run that began there, beside the runs' folders, and refuses the id."""
    import shutil

    from mmvm.secure.session import SiteSecrets

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    keys = site_keys(make_sites(cfg, specs, root))
    pub = {n: k.public for n, k in keys.items()}

    def endpoint(run_id):
        site = make_sites(cfg, specs, root)["n0"]
        sec = SiteSecrets(keys[site.name], pub, run_id, tmp_path / "st" / f"run-{run_id}")
        return Endpoint(site, SealedChannel(sec))

    assert endpoint(RUN).handle(DescribeRequest()).sealed
    ledger = next((tmp_path / "st").glob("*.secure-runs"))
    assert ledger.stat().st_mode & 0o777 == 0o600  # the site's own, as its state
    shutil.rmtree(tmp_path / "st" / f"run-{RUN}")  # the run's state is gone
    with pytest.raises(SecurityError, match=rf"secure run {RUN} already began at this "
                                            rf"site and its state is gone"):
        endpoint(RUN).handle(DescribeRequest())
    assert endpoint("78").handle(DescribeRequest()).sealed  # another run begins
