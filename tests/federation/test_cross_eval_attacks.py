"""A hostile server or site against the cross-site evaluation (security review of
2026-12-05): what a site answers, scores and reports must stay within its node
config whatever the server sends, and one site must not speak for another."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmvm.federation.channel import PlainChannel
from mmvm.federation.cross_eval import combine
from mmvm.federation.endpoint import Endpoint
from mmvm.federation.messages import SERVER, EvaluateRequest, HeldOutRequest
from mmvm.federation.policy import SitePolicy
from mmvm.federation.posteriors import Posteriors, decode_table, encode_table
from mmvm.federation.progress import ProtocolOrderError
from tests.support.federate import Tampering, cross_run, federate, make_sites, split

DEPLOYED = SitePolicy()  # a node config's defaults (not a simulation's test bed)
NO_LABELS = SitePolicy(eval_labels=())  # no judges to train (coherence not tested here)


@pytest.fixture
def site(site_before_eval):
    """site-m0 before its evaluation (the federation conftest's)."""
    return site_before_eval


def _table(site, rows, modality="m1") -> dict[str, bytes]:
    d = site.cfg.model.latent_dim
    rows = np.asarray(rows, np.int64)
    z = np.zeros((len(rows), d), np.float32)
    return {SERVER: encode_table({modality: Posteriors(rows, z, z)})}


def test_heldout_is_answered_once_a_run(site):
    ep = Endpoint(site, PlainChannel(), DEPLOYED)
    first = ep.handle(HeldOutRequest())
    assert len(first.identifiers) == 96
    assert ep.handle(HeldOutRequest()) == first  # a restarted server: the same answer
    other = {"m0": {n: a * 1.1 for n, a in site.weights("m0").items()}}
    site.link.holders = {"m0": [site.name, "b"]}  # as if m0 were shared, so that
    # weights may come for it
    try:
        with pytest.raises(ProtocolOrderError, match="answered once"):
            ep.handle(HeldOutRequest(weights=other))  # encoders of the server's choosing
    finally:
        site.link.holders = {}


def test_a_table_is_scored_only_with_the_heldout_weights_and_once(site, tmp_path):
    ep = Endpoint(site, PlainChannel(), SitePolicy(state=str(tmp_path / "state")))
    every = np.arange(96)
    got = ep.handle(EvaluateRequest(posteriors=_table(site, every))).metrics
    assert not any(k.startswith("impute") for k in got)  # no heldout answered
    assert "no heldout" in " ".join(ep.notes)
    site.progress.phase = "attached"  # as after an evaluation that failed (its
    site.replies.entries.pop("evaluate")  # reply is not kept then)
    ep.handle(HeldOutRequest())
    got = ep.handle(EvaluateRequest(posteriors=_table(site, every))).metrics
    assert got["impute/m1->m0_n"] == 96 and got["coherence/m1->m0_n"] == 96
    # its judge is kept in its state folder, not written into its data folder
    assert list((tmp_path / "state" / "classifiers").glob("m0-*.pt"))
    site.progress.phase = "attached"
    site.replies.entries.pop("evaluate")
    again = ep.handle(EvaluateRequest(posteriors=_table(site, every))).metrics
    assert not any(k.startswith("impute") for k in again)
    assert "scored once" in " ".join(ep.notes)


def test_a_site_that_does_not_share_scores_nothing(site):
    ep = Endpoint(site, PlainChannel(), SitePolicy(share_test=False))
    assert ep.handle(HeldOutRequest()).identifiers == []
    got = ep.handle(EvaluateRequest(posteriors=_table(site, np.arange(96)))).metrics
    assert not any(k.startswith(("impute", "coherence")) for k in got)


def test_a_table_that_does_not_decode_is_refused_without_the_test_size(site):
    """Its decode error named the test set's size ("outside the 96 aligned rows"),
    which a site with report-losses off does not send."""
    ep = Endpoint(site, PlainChannel(), SitePolicy(report_losses=False, share_test=True))
    ep.handle(HeldOutRequest())
    got = ep.handle(EvaluateRequest(posteriors=_table(site, [10**6]))).metrics
    assert got.get("cross_refused") == 1.0
    assert "96" not in " ".join(f"{k}={v}" for k, v in got.items())
    assert any("96" in n for n in ep.notes)  # the site's own log says why


def test_a_score_over_a_few_rows_the_server_chose_is_not_reported(site):
    ep = Endpoint(site, PlainChannel(), DEPLOYED)
    ep.handle(HeldOutRequest())
    got = ep.handle(EvaluateRequest(posteriors=_table(site, [3]))).metrics
    assert not [k for k in got if "m1->" in k or k.startswith("impute")], got
    assert got["cross_floored"] == 1.0  # the server notes it (and gives no total)
    assert got["coherence/m0->m0_n"] == 96  # its own, over every row: reported
    assert "fewer than 24 test rows" in " ".join(ep.notes)


def _post(site, rows):
    z = np.zeros((len(rows), site.cfg.model.latent_dim), np.float32)
    return Posteriors(np.asarray(rows, np.int64), z, z)


def test_judges_larger_than_the_node_config_allows_do_not_train(site):
    ep = Endpoint(site, PlainChannel(), SitePolicy(max_params=1000))
    ep.handle(HeldOutRequest())
    got = ep.handle(EvaluateRequest(posteriors=_table(site, np.arange(96)))).metrics
    assert "impute/m1->m0" in got and not any(k.startswith("coherence") for k in got)
    assert "max-params" in " ".join(ep.notes)


def test_a_site_that_lists_ids_it_has_no_posterior_of_is_left_out(
        tiny_polymnist, tiny_config, tmp_path):
    """Guessed ids (another site's) would be sent the others' posteriors of them."""
    def alter(site, reply):
        if reply.kind == "heldout" and site == "site-m2":
            reply.identifiers += [f"guess-{i}" for i in range(5)]

    result = cross_run(tiny_config(tiny_polymnist, epochs=1), tiny_polymnist, tmp_path,
                       alter=alter)
    assert "5 of its test ids without a posterior" in result.cross_notes["site-m2"]
    assert set(result.cross_site["imputation"]["pairs"]) == {"m0->m1", "m1->m0"}


def test_two_sites_that_claim_one_sample_are_left_out_not_everyone(
        tiny_polymnist, tiny_config, tmp_path):
    """Hybrid layout: site-m0-1 also sends m0 posteriors of site-m0-0's test samples;
    the server cannot tell whose are real, so both are left out, the others scored."""
    cfg = tiny_config(tiny_polymnist, epochs=1)
    specs, root = split(tiny_polymnist, tmp_path, "hybrid")
    sites = make_sites(cfg, specs, root)
    endpoints = {k: Endpoint(s, PlainChannel(), NO_LABELS) for k, s in sites.items()}
    names = {k: s.name for k, s in sites.items()}

    def alter(requests, replies):
        by_name = {names[k]: r for k, r in replies.items() if r.kind == "heldout"}
        if not by_name:
            return
        victim, thief = by_name["site-m0-0"], by_name["site-m0-1"]
        mine = decode_table(thief.posteriors[SERVER])["m0"]
        extra = np.arange(len(thief.identifiers),
                          len(thief.identifiers) + len(victim.identifiers))
        z = np.zeros((len(extra), cfg.model.latent_dim), np.float32)
        thief.identifiers += victim.identifiers
        thief.posteriors[SERVER] = encode_table({"m0": Posteriors(
            np.concatenate([mine.rows, extra]), np.concatenate([mine.mu, z]),
            np.concatenate([mine.logvar, z]))})

    result = federate(cfg, endpoints, transport=Tampering(endpoints, alter),
                      exchange="step", cross_eval="mean")
    for name in ("site-m0-0", "site-m0-1"):
        assert "another site sent too" in result.cross_notes[name]
    assert set(result.cross_site["imputation"]["pairs"]) == {"m1->m2", "m2->m1"}


def test_a_site_cannot_speak_for_another_sites_pairs_nor_outweigh_it():
    holders = {"a": ["m0"], "b": ["m1"]}
    evaluation = {"a": {"site": "a", "impute/m1->m0": 10.0, "impute/m1->m0_n": 4.0,
                        "impute_rest/m0": 10.0, "impute_rest/m0_n": 4.0},
                  "b": {"site": "b", "impute/m0->m1": 20.0, "impute/m0->m1_n": 4.0,
                        # b's word on a's pair, with a count it cannot have
                        "impute/m1->m0": 1e9, "impute/m1->m0_n": 1e300,
                        "coherence/m0->m1": 7.0, "coherence/m0->m1_n": 4.0,
                        # and a count beyond the rows it had of both
                        "impute_rest/m1": 20.0, "impute_rest/m1_n": 5.0}}
    from mmvm.federation.cross_eval import TestTables

    tables = TestTables(rows={"a": np.arange(4), "b": np.arange(4)},
                        available={"a": {"m0": 4, "m1": 4}, "b": {"m0": 4, "m1": 4}})
    out = combine(evaluation, ["m0", "m1"], holders, tables, draw=True)
    assert out["imputation"]["pairs"] == {"m1->m0": 10.0, "m0->m1": 20.0}
    assert out["imputation"]["rest"] == {"m0": 10.0}
    assert "coherence" not in out  # 7.0 is no fraction


def test_once_it_answered_heldout_a_site_trains_no_more_nor_goes_back(site, tmp_path):
    """Else a server could roll it back to a snapshot from before its heldout answer
    and ask again with other encoders, or move its private weights under the
    digest its evaluation checks (review of the fixes, 2026-12-05)."""
    from mmvm.federation.messages import ResumeRequest, WindowRequest
    from mmvm.federation.site_store import SiteStore

    ep = Endpoint(site, PlainChannel(), DEPLOYED, store=SiteStore(tmp_path / "s.pt"))
    ep.handle(HeldOutRequest())
    with pytest.raises(ProtocolOrderError, match="training is over"):
        ep.handle(WindowRequest(window=site.progress.window + 1))
    with pytest.raises(Exception, match="training is over"):
        ep.handle(ResumeRequest(run="1", window=-1))


def test_a_cached_heldout_answer_is_repeated_only_as_it_was_and_while_shared(site):
    """A server that died in the final evaluation asks again with the same weights:
    the same answer, byte for byte (it had it); other weights get nothing."""
    ep = Endpoint(site, PlainChannel(), DEPLOYED)
    first = ep.handle(HeldOutRequest())
    ep.handle(EvaluateRequest())
    assert ep.handle(HeldOutRequest()) is first
    other = {"m0": {n: v + 1.0 for n, v in site.weights("m0").items()}}
    site.link.holders = {"m0": [site.name, "b"]}  # as if m0 were shared (weights may
    try:                                          # come for it)
        with pytest.raises(ProtocolOrderError, match="heldout refused: the site is "
                                                     "'evaluated'"):
            ep.handle(HeldOutRequest(weights=other))
    finally:
        site.link.holders = {}
    site.progress.phase = "attached"
    quiet = Endpoint(site, PlainChannel(), SitePolicy(share_test=False))
    again = quiet.handle(HeldOutRequest())  # its node config now says no: nothing
    assert not again.identifiers and not again.posteriors  # resent, and it says why
    assert again.reason == "its node config keeps its test posteriors (share-test = " \
        "false)"  # as a secure site's does


def test_a_site_with_every_modality_sends_which_rows_it_holds_not_their_values(
        tiny_polymnist, tiny_config, tmp_path):
    """Horizontal layout: no other site holds its samples, so its posteriors would
    serve no one (and its averaged encoders are the server's choice); it still
    scores its own modalities from each other, as a central evaluation would."""
    import math

    from mmvm.data import open_dataset
    from mmvm.imputation import imputation_nll
    from mmvm.training import build_model

    cfg = tiny_config(tiny_polymnist, epochs=1)
    sent = []
    result = cross_run(cfg, tiny_polymnist, tmp_path, "horizontal", exchange="round",
                       alter=lambda site, reply: sent.append(reply)
                       if reply.kind == "heldout" else None)
    assert len(sent) == 2
    for reply in sent:
        for p in decode_table(reply.posteriors[SERVER]).values():
            assert not p.mu.any() and not p.logvar.any()
    model = build_model(cfg)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in result.model_state.items()})
    want = imputation_nll(model, open_dataset(tiny_polymnist / "test.parquet",
                                              ["m0", "m1", "m2"], cfg.data),
                          "mmvm", sample=False)
    got = result.cross_site["imputation"]
    for k, v in want["pairs"].items():
        assert math.isclose(got["pairs"][k], v, rel_tol=1e-4), (k, got["pairs"][k], v)
    assert math.isclose(got["total"], want["total"], rel_tol=1e-4)


def test_a_score_from_the_sites_own_modality_that_would_lose_rows_is_not_reported():
    """Security review of small_cells: an own-source score's rows are the site's
    data's, not the server's; left out a row in one run and not in another, two runs
    of the same weights would difference to that row's value. Withheld instead, and
    the rest (server-shaped) still sum over whole cells; means rounded to float32."""
    from mmvm.federation.site_cross_eval import floored_means

    r, said = np.arange, []
    vals = lambda rows: (rows, np.linspace(1.0, 2.0, len(rows)))  # noqa: E731
    values = {"coherence/m0->m0": vals(r(40)), "impute/m1->m0": vals(r(30)),
              "coherence/m1->m0": vals(np.append(r(30), 35)),  # 35: a cell of one
              "impute/m2->m0": vals(r(20))}
    means, left = floored_means(values, ["m0"], 5, said.append)
    assert left and "coherence/m0->m0" not in means  # own, would lose row 35
    assert means["coherence/m1->m0_n"] == means["impute/m1->m0_n"] == 30  # minus 35
    assert means["impute/m2->m0_n"] == 20
    assert "coherence/m0->m0" in said[0] and "1 test rows left out" in said[0]
    assert all(v == float(np.float32(v)) for v in means.values())
    whole, left = floored_means({k: v for k, v in values.items() if k != "impute/m2->m0"
                                 and "m1" not in k}, ["m0"], 5, said.append)
    assert not left and whole["coherence/m0->m0_n"] == 40  # nothing left out: reported
    with pytest.raises(ValueError, match="more than once"):
        floored_means({"impute/m1->m0": vals(np.array([1, 1, 2]))}, [], 5, said.append)


def test_scores_a_site_does_not_send_split_no_cell(site, monkeypatch):
    """Security review of small_cells: with report-losses off the imputation scores
    are never sent, so they must not decide which rows the coherences leave out (a
    row's holding another own modality changed the reported coherence)."""
    import mmvm.federation.site_eval as site_eval

    rows = np.arange(60)
    fake = {"coherence/m1->m0": (rows, np.ones(60)),
            "impute/m1->m0": (rows[:-1], np.ones(59))}  # would split off row 59
    monkeypatch.setattr(site_eval, "cross_values", lambda *a, **k: fake)
    blob = encode_table({"m1": _post(site, rows)})
    for losses, left in ((True, True), (False, False)):
        got = site_eval.evaluate_site(site, cross=blob, draw=False, log=lambda _: None,
                                      policy=SitePolicy(min_rows=5, eval_labels=(),
                                                        report_losses=losses))
        assert ("cross_rows_left_out" in got) == left, (losses, got)
        assert got["coherence/m1->m0_n"] == (59 if left else 60)
