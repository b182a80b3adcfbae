"""A malicious server against what sites share: secure aggregation's masks and
unmasking, the weights a site keeps, and the rows ring peers exchange in PSI.

As in test_attacks.py (the plan and protocol attacks), each test plays the server
and tries one attack a review found; it must fail at the site, before the site sends
anything it protects.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from mmvm.federation.coordinator import FederationError
from mmvm.federation.endpoint import Endpoint
from mmvm.federation.handover import assemble
from mmvm.federation.local import LocalTransport
from mmvm.federation.messages import (
    SKETCH_WINDOW,
    AlignRequest,
    DescribeRequest,
    EvaluateRequest,
    UnmaskRequest,
    WindowRequest,
)
from mmvm.federation.policy import PolicyError, SitePolicy
from mmvm.federation.progress import ProtocolOrderError
from mmvm.federation.sealed_channel import SealedChannel
from mmvm.secure.envelope import seal
from mmvm.secure.errors import SecurityError
from mmvm.secure.keys import SiteKeys
from mmvm.secure.session import b64
from tests.support.federate import (
    RUN,
    federate,
    make_sites,
    sealed_endpoints,
    secrets,
    site_keys,
    split,
)
from tests.support.malicious import AttachTamper, Recorder, forged, hybrid_sites


def test_5_a_site_told_another_group_cannot_be_averaged_into_garbage(cfg, tmp_path,
                                                                     tiny_polymnist):
    """The server tells one holder of m0 that the group is another set of sites: its
    masks no longer cancel. The run fails with an error instead of a wrong mean."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    holders = sorted(s.name for s in sites.values() if "m0" in s.names)
    other = next(s.name for s in sites.values() if "m0" not in s.names)
    victim = next(k for k, s in sites.items() if s.name == holders[-1])

    class Liar(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            if next(iter(requests.values())).kind == "attach":
                r = requests[victim]
                requests[victim] = dataclasses.replace(
                    r, shared={"m0": sorted([holders[0], holders[-1], other])})
            return super().exchange(requests, wait, need)

    # (the victim seals shares to the group it was told: the server refuses its
    # replies for the missing co-holder's share, or a holder refuses the view)
    with pytest.raises((SecurityError, FederationError), match="no self-mask share|not a "
                       "split of the group|without a self-mask share|share no modality|"
                       "no sketch keys from"):
        federate(cfg, {}, transport=Liar(endpoints), secure=True, exchange="step")


def test_5b_holders_given_different_experiments_cannot_be_unmasked(cfg, tmp_path,
                                                                    tiny_polymnist):
    """A SuperLink answers each SuperNode's run lookup on its own (and a resumed run
    brings a run config of its own), so it could give all holders of m0 but one a
    learning rate of 1e-30: they would send back about the weights they got, and the
    masked mean, less those, would be the last one's. Each window's masks bind the
    experiment config: holders given different ones derive different masks, and the
    aggregate is not unmasked: m0 is averaged in no window (each says why), and the
    run goes on without its mean."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    slow = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=1e-30))
    holders = [k for k, s in sites.items() if "m0" in s.names]
    for k in holders[:-1]:  # every holder but the last: sites of the same data
        site = sites[k]
        endpoints[k].site = type(site)(slow, site.name, site.train_path, site.test_path)
    result = federate(cfg, endpoints, secure=True, exchange="step")
    assert result.history and all(
        "masked FedAvg of 'm0'" in row.get("unaveraged_why", {}).get("m0", "")
        for row in result.history)


def test_5c_holders_sent_different_means_cannot_be_unmasked(cfg, tmp_path,
                                                            tiny_polymnist):
    """The server sends all holders of m0 but one other "averaged" weights (say, ones
    on which their training cannot move, so they send back about what they got),
    with sketch rows a colluding co-holder made for them (without, each holder
    refuses them at once: tests/federation/test_mean_sketches.py): the masks are
    bound to the digest of the weights each holder was sent, so they no longer
    cancel and the aggregate is not unmasked (the server's only mean of m0 stays
    window 0's); at the end the holders it fooled refuse the true mean of a window
    they took another mean of."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    holders = [k for k, s in sites.items() if "m0" in s.names]

    real = set()  # the windows of the means of m0 the server had

    class Forger(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            for k in holders[:-1]:
                r = requests.get(k)
                if r is not None and r.kind == "window" and r.weights.get("m0"):
                    real.add(int(r.weights["m0"][SKETCH_WINDOW][0]))
                    dead = {n: np.zeros_like(a) for n, a in r.weights["m0"].items()}
                    requests[k] = dataclasses.replace(
                        r, weights=forged(self.endpoints[k], {"m0": dead}))
            return super().exchange(requests, wait, need)

    with pytest.raises(SecurityError, match="took another mean of that window"):
        federate(cfg, {}, transport=Forger(endpoints), secure=True, exchange="step")
    assert real == {0}
    # control: the same run with the same "mean" for every holder completes
    sites, _, endpoints = hybrid_sites(cfg, tmp_path / "honest", tiny_polymnist)
    assert len(federate(cfg, endpoints, secure=True, exchange="step").history) == 3


@pytest.mark.parametrize("change, match", [
    (lambda v: {**v, "note": "x" * 1000}, "must hold exactly 'survivors' and 'dropped'"),
    (lambda v: {**v, "survivors": v["survivors"] * 2}, "list of distinct site names"),
])
def test_5d_a_site_keeps_only_the_unmask_view_itself(cfg, tmp_path, tiny_polymnist,
                                                     change, match):
    """A site keeps the unmask view with its state (to repeat its answer for the same
    view): anything else the server puts there (a long note, a name listed many
    times) would be written into the state after every window. Refused, with the
    site's state still at the window before."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)

    class Padder(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            requests = {k: dataclasses.replace(r, groups={m: change(v) for m, v in
                                                          r.groups.items()})
                        if r.kind == "unmask" else r for k, r in requests.items()}
            return super().exchange(requests, wait, need)

    # (every holder refuses each window's unmask step: after max-refused of them in
    # a row they are excluded, and the run stops: m0 would have no holder left)
    with pytest.raises(FederationError, match=f"failed the unmask step: MessageError: "
                                              f"unmask request: .*{match}.*Without them, "
                                              f"modality 'm0' has 0 of its 3 holder"):
        federate(cfg, {}, transport=Padder(endpoints), secure=True, exchange="step")
    assert all(s.progress.unmasked == -1 for s in sites.values())


def test_1_a_secure_site_keeps_its_weights_unless_it_allows_collection(cfg, tmp_path,
                                                                       tiny_polymnist):
    policy = SitePolicy(keys="k", require_secure=True, allow_collect=False, peers=None)
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist, policy)
    rec = Recorder(endpoints)
    res = federate(cfg, {}, transport=rec, secure=True, collect_model=True)
    assert res.model_state is None
    assert sorted(res.kept_weights) == sorted(s.name for s in sites.values())
    evaluated = [r for kind, _, reps in rec.log if kind == "evaluate" for r in reps.values()]
    assert evaluated and all(r.model == {} for r in evaluated)


class NoMeanAtEvaluate(LocalTransport):
    """Sends the evaluation without the means of the shared modalities; keeps the
    evaluate replies."""

    def exchange(self, requests, wait=None, need=1):
        kind = next(iter(requests.values())).kind
        if kind == "evaluate":
            requests = {k: dataclasses.replace(r, weights={}) for k, r in requests.items()}
        replies = super().exchange(requests, wait, need)
        if kind == "evaluate":
            self.evaluated = replies
        return replies


def test_1b_a_secure_holder_hands_in_no_weights_of_a_shared_modality_without_its_mean(
        cfg, tmp_path, tiny_polymnist):
    """A review: with allow-collect on, a server that left the mean of m0 out of the
    evaluate message got each holder's own weights of m0, which the masking hides."""
    policy = SitePolicy(keys="k", require_secure=True, allow_collect=True, peers=None)
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist, policy)
    transport = NoMeanAtEvaluate(endpoints)
    res = federate(cfg, {}, transport=transport, secure=True, collect_model=True)
    holders = [k for k, s in sites.items() if "m0" in s.names]
    assert len(holders) > 1 and set(transport.evaluated) == set(sites)
    for k in holders:
        handed = transport.evaluated[k].model
        assert "m0" not in handed, k
        assert set(handed) == set(sites[k].names) - {"m0"}  # its own modalities: handed
        assert any("hands in no weights of 'm0'" in n for n in endpoints[k].notes)
    assert res.model_state is None  # the sites that hold m0 alone handed in nothing
    assert sorted(res.kept_weights) == sorted(s.name for s in sites.values()
                                              if s.names == ["m0"])
    others = {k: transport.evaluated[k].model for k in sites}
    assert assemble({k: (sites[k].name, tuple(sites[k].names)) for k in sites}, others,
                    {"m0": holders}, {})[1].startswith(
        "no holder of shared modality 'm0' handed in its weights")


def test_6_a_colluding_ring_peer_tests_one_bounded_set_of_guesses_at_most(
        cfg, tmp_path, tiny_polymnist):
    """PSI, a server colluding with the victim's ring neighbour S: S may put guessed
    ids into "its" set (the victim cannot tell them from S's own), and the server
    then sees which guesses are the victim's ids. The victim bounds that set
    (max-align-rows) and multiplies one set per ring step, none after its last:
    an extra step would be another round of guesses."""
    from mmvm.secure import psi
    from mmvm.secure.envelope import open_envelope

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    victim = make_sites(cfg, specs, root)["n0"]
    a, s = victim.name, "zz-colluder"
    keys = {a: SiteKeys.generate(a), s: SiteKeys.generate(s)}
    pub = {n: k.public for n, k in keys.items()}
    ring = sorted([a, s])

    def endpoint(limit):
        policy = SitePolicy(keys="k", peers={s: pub[s].fingerprint}, max_align_rows=limit)
        return Endpoint(victim, SealedChannel(secrets(victim, keys, tmp_path / "st"),
                                              policy, "psi"), policy)

    def guesses_from_s(ids, counter):
        blob = psi.pack(psi.blind(ids, range(len(ids)), k_s))
        return seal(keys[s], pub[a], blob, run_id=RUN, round=0, counter=counter,
                    kind="psi")

    endpoint(100).handle(DescribeRequest())
    first = endpoint(100).handle(AlignRequest(step=0, ring=ring))
    k_s = psi.new_scalar()
    mine = psi.unpack(open_envelope(keys[s], pub[a], first.sealed[s], run_id=RUN,
                                    expected_round=0, expected_counter=1, kind="psi"))
    tags = {t.hex() for t in psi.exponentiate(mine, k_s)}  # S finishes a's tags
    guesses = [*victim.data.sample_ids[:3], *(f"nobody-{i}" for i in range(98))]
    with pytest.raises(PolicyError, match=r"PSI set of 'zz-colluder' has 101 "
                                          r"identifiers.*allows 100 \(max-align-rows\)"):
        endpoint(100).handle(AlignRequest(step=1, ring=ring, counts={s: 101},
                                          sealed={s: guesses_from_s(guesses, 1)}))
    last = endpoint(101).handle(AlignRequest(step=1, ring=ring, counts={s: 101},
                                             sealed={s: guesses_from_s(guesses, 1)}))
    hits = [g for g, t in zip(guesses, last.tags, strict=True) if t in tags]
    assert hits == guesses[:3]  # what PSI cannot prevent: S's set is S's choice
    with pytest.raises(ProtocolOrderError, match="align step 2"):
        endpoint(10**6).handle(AlignRequest(step=2, ring=ring,
                                            sealed={s: guesses_from_s(["x"], 2)}))


def _rows(blob: bytes) -> list[int]:
    return np.frombuffer(blob, "<u4").tolist()


def _blob(rows: list[int]) -> bytes:
    return np.asarray(rows, "<u4").tobytes()


def test_6b_the_servers_word_on_a_peers_rows_must_be_the_sites_own_rows(
        cfg, tmp_path, tiny_polymnist):
    """What a site seals to a peer follows the server's claim of the rows they share:
    rows this site does not hold (beyond the alignment, or another site's), a row
    twice, bytes that are not rows, more rows than the site holds, or a modality
    string (split into letters) are refused, not sealed to."""
    not_mine = lambda r: next((i for i in range(r.n) if i not in set(r.rows)),  # noqa: E731
                              r.n)  # a site that holds every row: beyond them
    lies = [lambda r, v, b: (v, _blob([*_rows(b), r.n])),
            lambda r, v, b: (v, _blob([*_rows(b), not_mine(r)])),
            lambda r, v, b: (v, _blob([_rows(b)[0], *_rows(b)])),
            lambda r, v, b: (v, b + b"\0"),
            lambda r, v, b: (v, _blob(list(range(len(r.rows) + 1)))),
            lambda r, v, b: (dict(v, modalities="m0m1"), b)]
    for i, lie in enumerate(lies):
        def tamper(r, lie=lie):
            told = {p: lie(r, v, r.peer_rows[p]) for p, v in r.peers.items()}
            return dataclasses.replace(r, peers={p: v for p, (v, _) in told.items()},
                                       peer_rows={p: b for p, (_, b) in told.items()})

        sites, _, endpoints = hybrid_sites(cfg, tmp_path / str(i), tiny_polymnist)
        with pytest.raises(SecurityError, match=r"server's description of peer .* not "
                                                r"distinct rows among this site's own"):
            federate(cfg, {}, transport=AttachTamper(endpoints, tamper), secure=True)
    sites, _, endpoints = hybrid_sites(cfg, tmp_path / "half", tiny_polymnist)
    with pytest.raises(SecurityError, match=r"names peers \['site-\w+'\] with "
                                            r"modalities or with rows, not both"):
        federate(cfg, {}, transport=AttachTamper(endpoints, lambda r: dataclasses.replace(
            r, peer_rows=dict(list(r.peer_rows.items())[1:]))), secure=True)
    # a peer that did not align is refused as such, before its claim is read (a
    # claim is converted to ~9x its bytes: the server could name thousands)
    sites, _, endpoints = hybrid_sites(cfg, tmp_path / "stranger", tiny_polymnist)
    with pytest.raises(SecurityError, match=r"names peers \['site-zz'\] that did not "
                                            r"take part in the alignment"):
        federate(cfg, {}, transport=AttachTamper(endpoints, lambda r: dataclasses.replace(
            r, peers={**r.peers, "site-zz": {"modalities": "m0m1"}},
            peer_rows={**r.peer_rows, "site-zz": b"\0"})), secure=True)


def test_6c_a_pseudonym_peer_that_aligned_more_than_max_align_rows_is_refused(
        cfg, tmp_path, tiny_polymnist):
    """Pseudonyms: every site holds the group key, so a peer alone (an honest server)
    can bring pseudonyms of guessed ids; attach would tell it which are the victim's,
    and the victim's posteriors of those would go to it. The victim bounds each peer's
    set by its max-align-rows before its own pseudonyms leave (the server's counts,
    from describe, come with the alignment), as PSI bounds the sets it multiplies; an
    alignment without the peers' counts is refused."""
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    keys = site_keys(sites)
    strict = SitePolicy(keys="k", require_secure=True, max_align_rows=191)
    rec = Recorder(sealed_endpoints(sites, keys, tmp_path / "strict", strict))
    with pytest.raises(PolicyError, match=r"peer 'site-m\d' described 192 samples to "
                                          r"align; its node config allows 191 "
                                          r"\(max-align-rows\)"):
        federate(cfg, {}, transport=rec, secure=True)
    assert [kind for kind, _, _ in rec.log] == ["describe"]  # no attach: no overlap told

    for i, counts in enumerate([{}, [1, 2]]):
        class NoCounts(LocalTransport):
            def exchange(self, requests, wait=None, need=1, counts=counts):
                if next(iter(requests.values())).kind == "align":
                    requests = {k: dataclasses.replace(r, counts=counts)
                                for k, r in requests.items()}
                return super().exchange(requests, wait, need)

        _, _, endpoints = hybrid_sites(cfg, tmp_path / f"uncounted{i}", tiny_polymnist)
        with pytest.raises(SecurityError, match="the server gives no sample count of"):
            federate(cfg, {}, transport=NoCounts(endpoints), secure=True)


class _Stop(Exception):
    """The server leaves the round loop to go on by hand."""


def test_5f_a_modality_only_the_site_holds_never_takes_the_servers_weights(
        cfg, tmp_path, tiny_polymnist):
    """Only the server says which modalities are shared. Told that m0, held by the
    victim alone, is "shared" with two sites that never hear of it, the victim
    accepted the attach and loaded every "mean" the server sent (each window's and the
    evaluation's): the server owned m0's encoder and decoder, and the model the site
    keeps. Now the victim trains no window without its co-holders' sealed sketch keys,
    which made-up ones never send; and were they sites colluding with the server, a
    mean is loaded only once a co-holder's sealed share envelope has named the same
    group: the victim keeps its own weights and says so in its log."""
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    endpoints = sealed_endpoints(sites, site_keys(sites), tmp_path / "state")
    victim = next(k for k, s in sites.items() if s.names == ["m0"])
    others = sorted(s.name for k, s in sites.items() if k != victim)

    class Claim(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            if next(iter(requests.values())).kind != "attach":
                return super().exchange(requests, wait, need)
            requests[victim] = dataclasses.replace(
                requests[victim], shared={"m0": [sites[victim].name, *others]})
            super().exchange(requests, wait, need)
            raise _Stop

    with pytest.raises(_Stop):
        federate(cfg, {}, transport=Claim(endpoints), secure=True, exchange="round")
    site, endpoint = sites[victim], endpoints[victim]
    assert site.linked().shared == ["m0"]  # the attach itself cannot be told apart
    rng = np.random.default_rng(0)
    crafted = {n: rng.normal(0, 1, v.shape).astype(v.dtype)
               for n, v in site.shared_weights("m0").items()}
    before = site.shared_weights("m0")
    for weights in ({"m0": crafted}, forged(endpoint, {"m0": crafted})):
        with pytest.raises(SecurityError, match=re.escape(f"no sketch keys from {others}")):
            endpoint.handle(WindowRequest(window=0, weights=weights, absent=others))
    assert all((site.shared_weights("m0")[n] == before[n]).all() for n in before)
    # the made-up co-holders never sealed it keys; were they sites colluding with the
    # server, keys would come, and the next defence is the co-holder's confirmation
    sec = endpoint.channel.sec
    sec.state["sketch"]["peers"] = {n: {"m0": b64(bytes(32))} for n in others}
    with pytest.raises(SecurityError, match="comes with no sketch rows"):
        endpoint.handle(WindowRequest(window=0, weights={"m0": crafted}, absent=others))
    endpoint.handle(WindowRequest(window=0, weights=forged(endpoint, {"m0": crafted}),
                                  absent=others))
    after = site.shared_weights("m0")
    moved = max(float(np.abs(after[n] - before[n]).max()) for n in after)
    assert 0 < moved < 0.1  # one window of Adam at lr 1e-3 from its own weights
    assert endpoint.notes == [
        "window 0: kept its own weights of 'm0', not the server's mean: no other holder "
        "has confirmed sharing it yet (a co-holder's sealed share envelope names the "
        "group at an unmask; only the server says the modality is shared)"]
    # nor can the server confirm the group itself: an unmask that calls the others
    # dropped, or names a survivor whose sealed share envelope it cannot bring
    me = sites[victim].name
    for view in ({"survivors": [me], "dropped": others},
                 {"survivors": [me, others[0]], "dropped": [others[1]]}):
        with pytest.raises(SecurityError, match="survivors"):
            endpoint.handle(UnmaskRequest(window=0, groups={"m0": view}))
    assert endpoint.channel.sec.state.get("confirmed", []) == []
    said = endpoint.handle(EvaluateRequest(weights=forged(endpoint, {"m0": crafted})))
    assert all(np.array_equal(site.shared_weights("m0")[n], after[n]) for n in after)
    assert said.metrics["unconfirmed_means"] == 1.0  # the server learns it was not taken
    assert endpoint.notes[0].startswith("the evaluation: kept its own weights of 'm0'")


def test_5g_holders_load_the_mean_once_a_co_holder_confirmed_the_group(cfg, tmp_path,
                                                                        tiny_polymnist):
    """The rule costs a real group nothing: each window's unmask opens the co-holders'
    share envelopes, which confirm the group, so every later mean is loaded and the
    holders of m0 end with the same weights."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    federate(cfg, endpoints, secure=True, exchange="step")
    holders = [k for k, s in sites.items() if "m0" in s.names]
    assert all(endpoints[k].channel.sec.state["confirmed"] == ["m0"] for k in holders)
    assert all(endpoints[k].notes == [] for k in holders)
    first = sites[holders[0]].shared_weights("m0")
    for k in holders[1:]:
        assert all(np.array_equal(sites[k].shared_weights("m0")[n], v)
                   for n, v in first.items())


def test_6d_a_site_masks_only_in_the_group_its_node_config_lists(cfg, tmp_path,
                                                                 tiny_polymnist):
    """Only the server said who shares a modality: one that put a holder in a group
    of itself and two colluding sites ({A, C1, C2}: threshold 2) had A's self-mask
    seed from A's own two shares, and A's weights, every window (review of
    2026-12-05). With holders= a site refuses any other group at attach, before its
    first masked update; the real groups train as before."""
    sites, keys, _ = hybrid_sites(cfg, tmp_path / "k", tiny_polymnist, shards=4)
    names = sorted({m for s in sites.values() for m in s.names})
    real = {m: frozenset(s.name for s in sites.values() if m in s.names) for m in names}
    policy = SitePolicy(keys="k", require_secure=True, holders=real)
    res = federate(cfg, sealed_endpoints(sites, keys, tmp_path / "ok", policy),
                   secure=True)
    assert res.history and all(row["unaveraged"] == [] for row in res.history)

    sites, keys, _ = hybrid_sites(cfg, tmp_path / "k2", tiny_polymnist, shards=4)
    m, group = next((m, sorted(g)) for m, g in real.items() if len(g) >= 4)

    def fake(r):  # a group of three of the four holders, two of them colluding
        return dataclasses.replace(r, shared={**r.shared, m: group[:3]}) \
            if m in r.shared else r

    with pytest.raises(PolicyError, match=rf"the server puts modality '{m}' in the "
                       rf"group \[.*\]; its node config's holders= lists "
                       rf"\[.*\]: a group other than the real holders"):
        federate(cfg, {}, transport=AttachTamper(
            sealed_endpoints(sites, keys, tmp_path / "bad", policy), fake), secure=True)
