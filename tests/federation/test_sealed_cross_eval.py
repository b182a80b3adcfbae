"""The cross-site evaluation of a secure run: test ids travel as keyed pseudonyms of
the test split, test posteriors sealed to the peers that share the sample, so the
server routes bytes it cannot read (:mod:`mmvm.federation.sealed_heldout`,
:mod:`mmvm.federation.sealed_test_routing`).

With posterior means the scores are a function of the trained weights and the test
data only: they must equal a central evaluation of the collected model on the joined
test file, as in plaintext (tests/federation/test_cross_eval.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmvm.data.store import read_site_table
from mmvm.federation.messages import KIND_TEST, HeldOutRequest
from mmvm.federation.policy import SitePolicy
from mmvm.federation.progress import ProtocolOrderError
from mmvm.imputation import imputation_nll
from mmvm.secure.envelope import peek_header
from mmvm.secure.errors import SecurityError
from tests.support.central import (
    central,
    close,
    coherence_matches,
    imputation_matches,
    judged_config,
)
from tests.support.federate import (
    MODALITIES,
    Tampering,
    federate,
    make_sites,
    sealed_endpoints,
    site_keys,
    split,
)

NO_LABELS = SitePolicy(eval_labels=())  # a deployed site that reports no label: no judges


def _secure_run(cfg, data_root, tmp, layout="vertical", alter=None, shards=3,
                policy=NO_LABELS, align="pseudonym", **settings):
    """A secure run (keyed pseudonyms) of ``layout`` ending in the cross-site
    evaluation; ``alter(requests, replies)`` sees (and may change) every exchange."""
    specs, root = split(data_root, tmp, layout, shards=shards)
    sites = make_sites(cfg, specs, root)
    endpoints = sealed_endpoints(sites, site_keys(sites), tmp / "state", policy, align)
    transport = Tampering(endpoints, alter or (lambda requests, replies: None))
    settings = {"cross_eval": "mean", "exchange": "step", "secure": True, "align": align,
                **settings}
    return federate(cfg, endpoints, transport, **settings), sites, endpoints, root


@pytest.fixture(scope="module")
def vertical(tiny_polymnist, tmp_path_factory):
    """Three sites, one modality each; every message of the run recorded."""
    torch.set_num_threads(1)
    cfg = judged_config(tiny_polymnist)
    seen = []
    result, sites, endpoints, root = _secure_run(
        cfg, tiny_polymnist, tmp_path_factory.mktemp("sealed-cross"), policy=None,
        alter=lambda requests, replies: seen.append((dict(requests), dict(replies))))
    return cfg, sites, endpoints, result, seen, root


def test_sealed_imputation_equals_a_central_evaluation_of_the_collected_model(
        vertical, tiny_polymnist):
    cfg, _, _, result, _, _ = vertical
    imputation_matches(cfg, result, tiny_polymnist)
    model, test = central(cfg, result, tiny_polymnist)
    want = imputation_nll(model, test, "mmvm", sample=False)
    got = result.cross_site["imputation"]
    assert got["n"] == want["n"] and got["samples"] == want["samples"] == len(test)
    assert result.cross_notes == {}


def test_sealed_coherence_equals_a_central_evaluation_with_the_sites_judges(
        vertical, tiny_polymnist):
    cfg, sites, _, result, _, _ = vertical
    coherence_matches(cfg, sites, result, tiny_polymnist)


def test_the_server_sees_pseudonyms_and_envelopes_only(vertical):
    """Every heldout and evaluate message of the run: no test id, no plaintext table;
    the test posteriors travel as envelopes of kind ``testposterior``, each from a
    site to another that shares the sample."""
    _, sites, _, _, seen, root = vertical
    ids = {i for s in sites.values() for i in read_site_table(s.test_path).sample_ids}
    kinds = [next(iter(req.values())).kind for req, _ in seen]
    assert kinds[-3:] == ["heldout", "heldout", "evaluate"]
    (_, step0), (_, step1), (evaluate, _) = seen[-3:]
    for reply in step0.values():
        assert reply.identifiers and not set(reply.identifiers) & ids
        assert not reply.posteriors
    names = {s.name for s in sites.values()}
    routed = 0
    for key, reply in step1.items():
        for peer, blob in reply.posteriors.items():
            h = peek_header(blob)
            assert (h.kind, h.sender, h.recipient) == (KIND_TEST, sites[key].name, peer)
            assert peer in names - {sites[key].name}
            routed += 1
    assert routed == 6  # every ordered pair of the three sites
    for key, req in evaluate.items():
        assert set(req.posteriors) == names - {sites[key].name}
        assert all(peek_header(b).kind == KIND_TEST for b in req.posteriors.values())


def test_test_pseudonyms_are_not_the_training_ones(vertical):
    """The test split has its own key: the server cannot link a test pseudonym to a
    training one (or tell that an id is in both)."""
    _, _, _, _, seen, _ = vertical
    train = {i for req, replies in seen if next(iter(req.values())).kind == "align"
             for r in replies.values() for i in r.identifiers}
    test = {i for _, replies in seen[-3:-2] for r in replies.values()
            for i in r.identifiers}
    assert train and test and not train & test


def test_a_site_answers_each_step_once_and_only_in_order(vertical):
    """After the run: step 0 asked again gets the same pseudonyms (a restarted
    server); step 1 with other rows is refused (each answer is the test set sealed
    to rows of the server's choosing), as is a step that does not exist."""
    _, _, endpoints, _, seen, _ = vertical
    key, ep = next(iter(endpoints.items()))
    ep.site.progress.phase = "attached"  # as if the evaluation had not been answered
    assert ep.handle(HeldOutRequest()).identifiers == seen[-3][1][key].identifiers
    with pytest.raises(ProtocolOrderError, match="sealed its test posteriors once"):
        ep.handle(HeldOutRequest(step=1, n=96, rows=list(range(96)),
                                 counts={ep.site.name: 96}))
    with pytest.raises(ProtocolOrderError, match="are 0 to 1"):
        ep.handle(HeldOutRequest(step=2))


def test_server_claims_outside_the_sites_rows_are_refused(tiny_polymnist, tiny_config,
                                                           tmp_path):
    """Step 1 names rows the site did not send, or a peer it never trained with:
    refused before anything is encoded or sealed."""
    cfg = tiny_config(tiny_polymnist, epochs=1)
    bad = {}

    def alter(requests, replies):
        req = next(iter(requests.values()))
        if req.kind == "heldout" and req.step == 1 and not bad:
            key = next(iter(requests))
            ep, test = endpoints[key], endpoints[key].channel.sec.state["test"]
            rows = list(req.rows)
            for claim, match in (
                    (HeldOutRequest(weights=req.weights, step=1, n=req.n,
                                    rows=rows, peer_rows={"site-x": b"\x00\x00\x00\x00"},
                                    counts={**req.counts, "site-x": 1}),
                     "no peer of its training"),
                    (HeldOutRequest(weights=req.weights, step=1, n=req.n,
                                    rows=rows[:-1], counts=req.counts), "one distinct row"),
                    (HeldOutRequest(weights=req.weights, step=1, n=10 * req.n,
                                    rows=rows, counts=req.counts), "counts together"),
                    (HeldOutRequest(weights=req.weights, step=1, n=req.n, rows=rows,
                                    counts={**req.counts,
                                            next(iter(req.peer_rows)): 2_000_000}),
                     "max-align-rows"),
                    (HeldOutRequest(weights=req.weights, step=1, n=req.n, rows=rows,
                                    peer_rows={p: np.asarray([req.n], "<u4").tobytes()
                                               for p in req.peer_rows}, counts=req.counts),
                     "distinct rows among")):
                ep.site.replies.entries.pop("heldout", None)
                test["sealed"] = False  # as before its answer: only the claim is wrong
                with pytest.raises(SecurityError, match=match):
                    ep.handle(claim)
                bad[match] = True
            test["sealed"] = True

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    endpoints = sealed_endpoints(sites, site_keys(sites), tmp_path / "state", NO_LABELS)
    federate(cfg, endpoints, Tampering(endpoints, alter), cross_eval="mean",
             exchange="step", secure=True)
    assert bad


def test_a_tampered_envelope_is_refused_and_the_rest_of_the_evaluation_stands(
        tiny_polymnist, tiny_config, tmp_path):
    """The server flips a byte of one routed test envelope: its recipient scores
    nothing cross-site (its journal says why; the server is told it refused) and
    still reports its probe and reconstruction; the other sites' scores stand."""
    cfg = tiny_config(tiny_polymnist, epochs=1)
    hit = []

    class Flipping(Tampering):
        def exchange(self, requests, wait=None, need=1):
            first = next(iter(requests.values()))
            if first.kind == "evaluate" and not hit:
                key = sorted(requests)[0]
                sender = sorted(requests[key].posteriors)[0]
                blob = bytearray(requests[key].posteriors[sender])
                blob[-1] ^= 1
                requests[key].posteriors[sender] = bytes(blob)
                hit.append(key)
            return super().exchange(requests, wait, need)

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    endpoints = sealed_endpoints(sites, site_keys(sites), tmp_path / "state", NO_LABELS)
    result = federate(cfg, endpoints, Flipping(endpoints, lambda r, s: None),
                      cross_eval="mean", exchange="step", secure=True)
    victim = sites[hit[0]].name
    ev = result.evaluation[hit[0]]
    assert ev["cross_refused"] == 1.0 and f"recon_nll/{sites[hit[0]].names[0]}" in ev
    assert "refused" in result.cross_notes[victim]
    assert not any(k.startswith(("impute", "coherence")) for k in ev)
    others = {m for k, s in sites.items() if k != hit[0] for m in s.names}
    assert set(result.cross_site["imputation"]["rest"]) == others
    assert math.isnan(result.cross_site["imputation"]["total"])
    assert any("refused" in n for n in endpoints[hit[0]].notes)


def test_a_modality_at_three_sites_is_scored_on_each_ones_samples(
        tiny_polymnist, tiny_config, tmp_path):
    """Hybrid layout, m0's samples over three sites (a masked FedAvg group): the
    means weighted by count are the central evaluation's, total included (each site
    holds one modality, so the server's count of multimodal samples is exact)."""
    cfg = tiny_config(tiny_polymnist, epochs=1)
    result, *_ = _secure_run(cfg, tiny_polymnist, tmp_path, "hybrid")
    imputation_matches(cfg, result, tiny_polymnist)


def test_sites_holding_every_modality_score_alone_and_give_no_total(
        tiny_polymnist, tiny_config, tmp_path):
    """Horizontal layout: no site shares a sample, so none seals anything; each
    scores its modalities from its own others. The server cannot count what a
    sample holds there: no total, and a warning says why."""
    cfg = tiny_config(tiny_polymnist, epochs=1)
    result, *_ = _secure_run(cfg, tiny_polymnist, tmp_path, "horizontal")
    model, test = central(cfg, result, tiny_polymnist)
    got = result.cross_site["imputation"]
    close(got["rest"], imputation_nll(model, test, "mmvm", sample=False)["rest"])
    assert math.isnan(got["total"])
    assert any("no imputation total" in w for w in result.cross_site["warnings"])


@pytest.mark.parametrize("layout", ["vertical", "hybrid"])
def test_a_psi_run_aligns_its_test_sets_by_a_ring_of_their_own(
        tiny_polymnist, tiny_config, tmp_path, layout):
    """``align = "psi"`` (what require-psi sites use): no group key, so the test
    sets go around a PSI ring of their own (heldout steps 1 to R, PSI envelopes at
    the evaluation's round); the numbers are the central evaluation's all the same,
    and no test id, pseudonym of one or posterior reaches the server."""
    cfg = tiny_config(tiny_polymnist, epochs=1)
    seen = []
    result, sites, _, _ = _secure_run(
        cfg, tiny_polymnist, tmp_path, layout, align="psi",
        alter=lambda requests, replies: seen.append((dict(requests), dict(replies))))
    imputation_matches(cfg, result, tiny_polymnist)
    held = [(req, rep) for req, rep in seen if next(iter(req.values())).kind == "heldout"]
    ring = len(sites)
    assert [next(iter(req.values())).step for req, _ in held] == list(range(ring + 2))
    ids = {i for s in sites.values() for i in read_site_table(s.test_path).sample_ids}
    kinds = set()
    for _, replies in held:
        for r in replies.values():
            assert not set(r.identifiers) & ids
            kinds |= {peek_header(b).kind for b in r.posteriors.values()}
    assert kinds == {"psi", KIND_TEST}


@pytest.mark.parametrize("fault", ["fails", "garbage"])
def test_a_site_that_leaves_the_test_ring_breaks_it_and_the_evaluation_goes_on(
        tiny_polymnist, tiny_config, tmp_path, fault):
    """One site fails the ring's second step, or sends a set that is no envelope at
    its first (that escaped the server's catch and ended a trained run without
    results: review of 2026-12-07): no site can finish the ring, so the run has no
    cross-site scores, every site of the ring is named with why, and each still
    reports its own evaluation."""
    import dataclasses

    from mmvm.federation.messages import SiteFailure

    def alter(requests, replies):
        req = next(iter(requests.values()))
        key = sorted(replies)[0] if replies else None
        if req.kind == "heldout" and req.step == 2 and fault == "fails":
            replies[key] = SiteFailure(key, "RuntimeError: disk full")
        if req.kind == "heldout" and req.step == 1 and fault == "garbage":
            peer = next(iter(replies[key].posteriors))
            replies[key] = dataclasses.replace(replies[key], posteriors={peer: b"garbage"})

    cfg = tiny_config(tiny_polymnist, epochs=1)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    endpoints = sealed_endpoints(sites, site_keys(sites), tmp_path / "state", NO_LABELS,
                                 align="psi")
    result = federate(cfg, endpoints, Tampering(endpoints, alter),
                      cross_eval="mean", exchange="step", secure=True, align="psi")
    assert result.cross_site == {}
    assert set(result.cross_notes) == {s.name for s in sites.values()}
    assert all("PSI ring failed" in why for why in result.cross_notes.values())
    assert all(f"recon_nll/{s.names[0]}" in result.evaluation.get(k, {})
               for k, s in sites.items())


def test_test_posteriors_a_peer_would_refuse_fail_the_step_as_a_whole(
        tiny_polymnist, tiny_config, tmp_path, monkeypatch):
    """A crafted mean can push chosen test rows' posteriors beyond what the format
    carries; each peer refusing its envelope (cross_refused) would be a bit per
    peer about rows the server picked. The site checks its whole table first: its
    step fails as one outcome, with no text of why, and the run goes on."""
    from mmvm.federation import sealed_heldout

    real = sealed_heldout.test_posteriors

    def crafted(site, data):
        table = real(site, data)
        if site.name == "site-m0":
            (p,) = table.values()
            p.logvar[0, 0] = 100.0  # beyond LIMITS["logvar"]
        return table

    monkeypatch.setattr(sealed_heldout, "test_posteriors", crafted)
    cfg = tiny_config(tiny_polymnist, epochs=1)
    result, *_ = _secure_run(cfg, tiny_polymnist, tmp_path)
    why = result.cross_notes["site-m0"]
    assert "its test posteriors failed (its log says why)" in why and "80" not in why
    assert set(result.cross_site["imputation"]["rest"]) == {"m1", "m2"}
    assert set(result.cross_site["imputation"]["pairs"]) == {"m1->m2", "m2->m1"}


@pytest.mark.parametrize("align", ["pseudonym", "psi"])
def test_sites_reloaded_from_disk_before_every_evaluation_message(
        tiny_polymnist, tiny_config, tmp_path, align):
    """A deployed site answers each message in a fresh process, from its state on
    disk (a second review found the secure steps' kept replies unreadable there, so
    every later message failed): here each site is saved and loaded again before
    every heldout and evaluate message, and the numbers are the in-memory run's."""
    from tests.support.federate import restarted

    cfg = tiny_config(tiny_polymnist, epochs=1)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    endpoints = sealed_endpoints(sites, site_keys(sites), tmp_path / "state", NO_LABELS,
                                 align=align)

    class Reloading(Tampering):
        def exchange(self, requests, wait=None, need=1):
            if next(iter(requests.values())).kind in ("heldout", "evaluate"):
                fresh = restarted(cfg, {k: e.site for k, e in endpoints.items()},
                                  tmp_path)
                for k, e in endpoints.items():
                    e.site = fresh[k]
            return super().exchange(requests, wait, need)

    result = federate(cfg, endpoints, Reloading(endpoints, lambda r, s: None),
                      cross_eval="mean", exchange="step", secure=True, align=align,
                      collect_model=True)
    assert result.cross_notes == {} and result.evaluation_errors == {}
    imputation_matches(cfg, result, tiny_polymnist)


def test_a_psi_site_seals_nothing_before_its_ring_is_done(tiny_polymnist, tiny_config,
                                                          tmp_path):
    """Second review: the seal step right after ring step 1 (of 3) sealed the site's
    posteriors of every row the server named; it is now refused until the ring's
    last step is answered."""
    cfg = tiny_config(tiny_polymnist, epochs=1)
    tried = []

    def alter(requests, replies):
        req = next(iter(requests.values()))
        if req.kind == "heldout" and req.step == 1 and not tried:
            key = sorted(requests)[0]
            with pytest.raises(ProtocolOrderError, match="in order"):
                endpoints[key].handle(HeldOutRequest(
                    weights=req.weights, step=4, n=96, rows=list(range(96)),
                    counts={n: 96 for n in req.ring}))
            tried.append(key)

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    endpoints = sealed_endpoints(sites, site_keys(sites), tmp_path / "state", NO_LABELS,
                                 align="psi")
    result = federate(cfg, endpoints, Tampering(endpoints, alter), cross_eval="mean",
                      exchange="step", secure=True, align="psi")
    assert tried and set(result.cross_site["imputation"]["rest"]) == set(MODALITIES)


def test_a_site_with_min_rows_scores_no_posteriors_its_peers_chose(
        tiny_polymnist, tiny_config, tmp_path):
    """Security review (2026-12-06): peers colluding with the server choose the
    values they seal. Two sources over the same test rows, equal but at one row,
    gave two means whose difference times n is that row's imputation NLL, with
    min-rows = 10 (one cell: nothing left out). A secure site whose min-rows is above
    1 now treats sealed values as the plaintext site treats the server's: it scores
    none of them, says why in its log and tells the server it withheld them."""
    cfg = tiny_config(tiny_polymnist, epochs=1)
    result, sites, endpoints, _ = _secure_run(
        cfg, tiny_polymnist, tmp_path, policy=SitePolicy(eval_labels=(), min_rows=5))
    for key, site in sites.items():
        ev = result.evaluation[key]
        assert ev["cross_withheld"] == 1.0 and f"recon_nll/{site.names[0]}" in ev
        assert not any(k.startswith(("impute", "coherence")) for k in ev), ev
        assert any("min-rows = 5" in n and "the peers in a secure one" in n
                   for n in endpoints[key].notes)


@pytest.mark.parametrize("align", ["pseudonym", "psi"])
def test_a_site_that_stops_sharing_its_test_set_seals_nothing_more(
        tiny_polymnist, tiny_config, tmp_path, align):
    """Security review (2026-12-07): share-test was read at heldout step 0 only, so a
    site whose operator turned it off after answering step 0 (and restarted its
    SuperNode) still answered the PSI ring and sealed its test posteriors to the
    peers the server named. Now its node config as it is now holds at every step:
    step 0 asked again says it keeps its test set out, later steps are refused."""
    import dataclasses

    from mmvm.federation.policy import PolicyError

    cfg, stopped = tiny_config(tiny_polymnist, epochs=1), []

    def alter(requests, replies):
        req = next(iter(requests.values()))
        if req.kind == "heldout" and req.step == 0 and not stopped:
            key = sorted(requests)[0]
            ep = endpoints[key]
            loose, ep.policy = ep.policy, dataclasses.replace(ep.policy, share_test=False)
            again = ep.handle(requests[key])
            assert not again.identifiers and not again.posteriors
            assert "share-test = false" in again.reason
            later = dataclasses.replace(requests[key], step=1, n=96,
                                        rows=list(range(96)), counts={ep.site.name: 96})
            with pytest.raises(PolicyError, match="share-test = false"):
                ep.handle(later)
            stopped.append(ep.site.name)
            ep.policy = loose  # (this harness raises a site's refusal: the run goes on)

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    endpoints = sealed_endpoints(sites, site_keys(sites), tmp_path / "state", NO_LABELS,
                                 align=align)
    result = federate(cfg, endpoints, Tampering(endpoints, alter), cross_eval="mean",
                      exchange="step", secure=True, align=align)
    assert stopped and result.evaluation_errors == {}
