"""The cross-site evaluation: each site scores imputation and coherence of its own
modalities from the other sites' test posteriors (plaintext runs).

With posterior means (``cross-eval = "mean"``) the scores are a function of the
trained weights and the test data only, so they must equal a central evaluation of
the collected model on the joined test file (:func:`mmvm.imputation.imputation_nll`,
:func:`mmvm.evaluation.coherence`, both with means), whichever site holds what."""

from __future__ import annotations

import math

import pytest
import torch

from mmvm.federation.messages import SERVER, HeldOutRequest
from mmvm.federation.policy import SitePolicy
from mmvm.federation.posteriors import decode_table, encode_table
from mmvm.imputation import imputation_nll, scoring
from tests.support.central import (
    central,
    coherence_matches,
    imputation_matches,
    judged_config,
)
from tests.support.federate import (
    MODALITIES,
    cross_run,
    federate,
    make_sites,
    plain_endpoints,
    split,
)

NO_LABELS = SitePolicy(eval_labels=())  # a deployed site that reports no label: no judges


@pytest.fixture(scope="module")
def vertical(tiny_polymnist, tmp_path_factory):
    """Three sites, one modality each, every test sample at all three; judged."""
    torch.set_num_threads(1)
    cfg = judged_config(tiny_polymnist)
    specs, root = split(tiny_polymnist, tmp_path_factory.mktemp("cross"), "vertical")
    sites = make_sites(cfg, specs, root)
    result = federate(cfg, plain_endpoints(sites), exchange="step", cross_eval="mean")
    return cfg, sites, result


def test_imputation_equals_a_central_evaluation_of_the_collected_model(
        vertical, tiny_polymnist):
    cfg, _, result = vertical
    imputation_matches(cfg, result, tiny_polymnist)
    model, test = central(cfg, result, tiny_polymnist)
    want = imputation_nll(model, test, "mmvm", sample=False)
    got = result.cross_site["imputation"]
    assert got["n"] == want["n"] and got["samples"] == want["samples"] == len(test)
    assert got["scoring"] == want["scoring"] and got["where"] == "cross-site"
    assert result.cross_notes == {}


def test_coherence_equals_a_central_evaluation_with_the_sites_judges(
        vertical, tiny_polymnist):
    cfg, sites, result = vertical
    want = coherence_matches(cfg, sites, result, tiny_polymnist)
    _, test = central(cfg, result, tiny_polymnist)
    got = result.cross_site["coherence"]
    assert abs(got["mean"] - want["mean"]) <= 1 / len(test) + 1e-9
    assert abs(got["self"] - want["self"]) <= 1 / len(test) + 1e-9
    every = [ev[f"coherence/{s}->{t}_n"] for ev in result.evaluation.values()
             for s in MODALITIES for t in ev["modalities"]]
    assert every == [len(test)] * 9  # each pair judged on every labelled test sample


def test_the_cross_site_numbers_come_with_their_chance_and_warnings(vertical):
    """A run whose weights stay at the sites has no other reading of them: the
    commonest test label's share beside the coherence, and a central evaluation's
    warnings (one epoch: imputation no better than one constant output)."""
    _, _, result = vertical
    majority = [ev[f"majority/{m}"] for ev in result.evaluation.values()
                for m in ev["modalities"]]
    assert result.cross_site["chance"]["majority"] == pytest.approx(
        sum(majority) / len(majority))
    constants = {m: ev[f"constant_nll/{m}"] for ev in result.evaluation.values()
                 for m in ev["modalities"]}
    rest = result.cross_site["imputation"]["rest"]
    worse = [m for m in rest if rest[m] > constants[m]]
    line = next((w for w in result.cross_site["warnings"]
                 if "imputed from the other modalities" in w), "")
    assert all(f"{m} " in line for m in worse) and bool(line) == bool(worse)
    assert all(f"judge_accuracy/{m}" in ev for ev in result.evaluation.values()
               for m in ev["modalities"])
    # the judges' accuracy, what "see their accuracy" points to (one site a modality)
    assert result.cross_site["classifier_accuracy"] == pytest.approx({
        m: ev[f"judge_accuracy/{m}"] for ev in result.evaluation.values()
        for m in ev["modalities"]})


def test_a_modality_held_by_two_sites_is_scored_on_each_ones_samples(
        tiny_polymnist, tiny_config, tmp_path):
    """Hybrid layout: m0's test samples are split over two sites; each scores its
    own, and their means weighted by count are the central evaluation's."""
    cfg = tiny_config(tiny_polymnist, epochs=1)
    result = cross_run(cfg, tiny_polymnist, tmp_path, "hybrid")
    imputation_matches(cfg, result, tiny_polymnist, total=False)
    _, test = central(cfg, result, tiny_polymnist)
    halves = [ev["impute_rest/m0_n"] for ev in result.evaluation.values()
              if ev["modalities"] == ["m0"]]
    assert len(halves) == 2 and sum(halves) == len(test) and min(halves) > 0
    assert "coherence" not in result.cross_site  # eval-labels = "": no judge, no score


def test_one_draw_scores_lie_around_the_means_and_say_so(tiny_polymnist, tiny_config,
                                                          tmp_path):
    """The default reading decodes one seeded draw of z, as `mmvm evaluate` does:
    other numbers than the means', the same samples counted, and the scoring string
    of a one-draw evaluation."""
    cfg = tiny_config(tiny_polymnist, epochs=1)
    drawn, means = (cross_run(cfg, tiny_polymnist, tmp_path, cross_eval=mode)
                    .cross_site["imputation"] for mode in ("draw", "mean"))
    assert drawn["scoring"] == scoring(sample=True)
    assert drawn["n"] == means["n"]
    assert all(math.isfinite(v) for v in drawn["pairs"].values())
    assert drawn["pairs"] != means["pairs"]


def test_a_site_that_keeps_its_test_posteriors_is_named_and_left_out(
        tiny_polymnist, tiny_config, tmp_path):
    """share-test = false at site-m1: the server knows none of its test ids, so m1 is
    neither a source nor a target; the run says so, and the others are scored."""
    result = cross_run(tiny_config(tiny_polymnist, epochs=1), tiny_polymnist, tmp_path,
                       policies={"site-m1": SitePolicy(eval_labels=(), share_test=False)})
    assert set(result.cross_site["imputation"]["pairs"]) == {"m0->m2", "m2->m0"}
    assert "share-test = false" in result.cross_notes["site-m1"]
    assert math.isnan(result.cross_site["imputation"]["total"])  # not every sample's


def test_a_site_that_reports_no_losses_sends_no_imputation_nor_counts(
        tiny_polymnist, tiny_config, tmp_path):
    quiet = SitePolicy(eval_labels=(), report_losses=False)
    result = cross_run(tiny_config(tiny_polymnist, epochs=1), tiny_polymnist, tmp_path,
                       policies={"site-m0": quiet})
    ev = next(e for e in result.evaluation.values() if e["site"] == "site-m0")
    assert not [k for k in ev if k.startswith("impute") or k.endswith("_n")], ev
    assert "m0" not in result.cross_site["imputation"]["rest"]
    assert "m1" in result.cross_site["imputation"]["rest"]
    # a total over the others' modalities only would read as the whole: not given
    assert math.isnan(result.cross_site["imputation"]["total"])
    assert "report-losses" in result.cross_notes["site-m0"]


def _repeat_an_id(reply) -> None:
    reply.identifiers[1] = reply.identifiers[0]


def _relabel_as_m1(reply) -> None:  # its own table, sent as posteriors of m1
    table = decode_table(reply.posteriors[SERVER])
    reply.posteriors[SERVER] = encode_table({"m1": next(iter(table.values()))})


@pytest.mark.parametrize("hostile, said", [(_repeat_an_id, "distinct"),
                                           (_relabel_as_m1, "does not hold")])
def test_a_hostile_test_reply_is_left_out_and_the_run_ends(
        tiny_polymnist, tiny_config, tmp_path, hostile, said):
    """A site that repeats an id, or sends posteriors of a modality it does not hold,
    is named and left out (its ids cannot be trusted: it gets nothing either); the
    others are still scored from each other, the run still written."""
    def alter(site, reply):
        if reply.kind == "heldout" and site == "site-m2":
            hostile(reply)

    result = cross_run(tiny_config(tiny_polymnist, epochs=1), tiny_polymnist, tmp_path,
                       alter=alter)
    assert said in result.cross_notes["site-m2"]
    assert set(result.cross_site["imputation"]["pairs"]) == {"m0->m1", "m1->m0"}
    assert result.model_state is not None


def test_a_plaintext_site_refuses_the_secure_steps_of_heldout(
        tiny_polymnist, tiny_config, tmp_path):
    """Step 1 (rows to seal to peers) is a secure run's: a plaintext site refuses it
    (tests/federation/test_sealed_cross_eval.py has the secure runs)."""
    cfg = tiny_config(tiny_polymnist, epochs=1)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    endpoints = plain_endpoints(sites)
    federate(cfg, endpoints, exchange="round")
    site_endpoint = next(iter(endpoints.values()))
    site_endpoint.site.progress.phase = "attached"
    with pytest.raises(Exception, match="secure-mode message"):
        site_endpoint.handle(HeldOutRequest(step=1, n=3, rows=[0, 1, 2]))


def test_a_site_that_fails_its_evaluation_makes_the_total_partial_and_is_named(
        tiny_polymnist, tiny_config, tmp_path):
    """site-m2 answered heldout, then failed its evaluation: the others' scores
    stand, the total (a sum over every modality) is not given, the site named."""
    from mmvm.federation.messages import SiteFailure

    def alter(site, reply):
        if reply.kind == "evaluate" and site == "site-m2":
            return SiteFailure("site-m2", "RuntimeError: disk full")
        return None

    result = cross_run(tiny_config(tiny_polymnist, epochs=1), tiny_polymnist, tmp_path,
                       alter=alter)
    imp = result.cross_site["imputation"]
    assert set(imp["rest"]) == {"m0", "m1"} and math.isnan(imp["total"])
    assert result.cross_notes["site-m2"] == "did not evaluate"


def test_a_modalitys_judge_accuracy_is_the_mean_over_the_sites_that_measured_it():
    """A site whose judge was not measured (NaN) made the mean NaN: the other sites'
    numbers vanished and the near-chance warning with them."""
    from mmvm.federation.cross_eval import cross_warnings

    evaluation = {"a": {"judge_accuracy/m0": 0.3, "majority/m0": 0.3},
                  "b": {"judge_accuracy/m0": float("nan"), "majority/m0": float("nan")},
                  "c": {"judge_accuracy/m0": 0.32, "majority/m0": 0.3}}
    chance, judges, said = cross_warnings({"coherence": {}}, evaluation, "mmvm")
    assert chance == pytest.approx(0.3) and judges == {"m0": pytest.approx(0.31)}
    assert any(w.startswith("the m0 judge scores 0.310 on real test data, near chance")
               for w in said)


def test_sites_that_split_their_samples_differently_are_warned_of(
        tiny_polymnist, tiny_config, tmp_path):
    """A hospital walkthrough (2026-12-06): two hospitals split by their own patient
    numbers, so a study one tested on trained at the other; the run completed with a
    cross-site evaluation of no pair and said nothing. Here site-m1's split is
    turned over (its test rows trained on, as many of its training rows tested on):
    the summary says that the sites split differently, and why."""
    import numpy as np

    from mmvm.data.store import read_site_table
    from mmvm.data.store_write import write_site_table
    from mmvm.federation.report import cross_site_lines
    from tests.support.federate import split

    _, root = split(tiny_polymnist, tmp_path, "vertical")
    paths = {s: root / "site-m1" / f"{s}.parquet" for s in ("train", "test")}
    t = {s: read_site_table(p) for s, p in paths.items()}
    k, n = len(t["test"].sample_ids), len(t["train"].sample_ids)
    turned = {"train": [(t["test"], np.arange(k)), (t["train"], np.arange(k, n))],
              "test": [(t["train"], np.arange(k))]}
    for s, parts in turned.items():
        def joined(field, parts=parts):
            return {c: np.concatenate([np.asarray(getattr(x, field)[c])[rows]
                                       for x, rows in parts])
                    for c in getattr(t["train"], field)}
        write_site_table(paths[s], [x.sample_ids[i] for x, rows in parts for i in rows],
                         joined("tensors"), joined("labels"), t["train"].dataset_meta,
                         scales=t["train"].scales)
    result = cross_run(tiny_config(tiny_polymnist, epochs=1), tiny_polymnist, tmp_path)
    said = " ".join(result.cross_site["warnings"])
    assert "the sites split their samples differently" in said
    assert "patient pseudonym" in said
    assert any("split their samples differently" in line
               for line in cross_site_lines(result.cross_site, result.cross_notes))
    # alike splits, one site keeping its test set (share-test off): no warning (a
    # review: the others' test samples looked unshared, their split blamed)
    fine = cross_run(tiny_config(tiny_polymnist, epochs=1), tiny_polymnist,
                     tmp_path / "fine", policies={
                         "site-m1": SitePolicy(share_test=False, eval_labels=())})
    assert "site-m1" in fine.cross_notes
    assert not any("split" in w for w in fine.cross_site.get("warnings", []))


def test_streaming_sites_score_coherence_from_their_decoded_copies(
        tiny_polymnist, tiny_config, tmp_path, monkeypatch):
    """Sites that stream their files train their coherence judges from the decoded
    copy, a batch at a time (a whole read would take the memory streaming spares):
    the scores equal those of sites that read their files whole."""
    import dataclasses

    from mmvm.data.dataset import MultimodalDataset

    cfg = tiny_config(tiny_polymnist, epochs=1)
    judged = {f"site-m{i}": SitePolicy() for i in range(3)}  # labels allowed: judges
    whole = cross_run(cfg, tiny_polymnist, tmp_path / "whole", policies=judged)
    streams = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, streaming=True, decoded_dir=str(tmp_path / "decoded")))

    def no_whole_read(*args, **kwargs):
        raise AssertionError("a whole read at a streaming site")

    monkeypatch.setattr(MultimodalDataset, "from_parquet", no_whole_read)
    streamed = cross_run(streams, tiny_polymnist, tmp_path / "streamed", policies=judged)
    assert whole.cross_site["coherence"]["pairs"], whole.cross_site
    assert streamed.cross_site == whole.cross_site
    assert len(list((tmp_path / "decoded").glob("*.npy"))) == 6  # 3 sites x train, test
