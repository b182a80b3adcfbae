"""Per-label probes at a site (``eval.labels``, the paper's MIMIC-CXR protocol): the
central evaluation's numbers on the same model and files, each column only where the
site's node config allows it, and the server's summary names the metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmvm.data import open_dataset
from mmvm.evaluation import evaluate_run
from mmvm.federation.policy import SitePolicy
from mmvm.federation.site import Site
from mmvm.federation.site_eval import evaluate_site
from tests.support.evaluation_data import findings_digits

NAMES = ["m0", "m1"]


@pytest.fixture
def site(tmp_path):
    """Two vector modalities with findings-like label columns, an untrained MMVM."""
    cfg = findings_digits(tmp_path, NAMES)
    torch.manual_seed(0)
    return Site(cfg, "hospital-a", tmp_path / "train.parquet", tmp_path / "test.parquet")


def test_a_sites_label_probes_are_the_central_ones_and_follow_its_policy(site):
    cfg = site.cfg
    central = evaluate_run(cfg, site.model, open_dataset(site.train_path, NAMES, cfg.data),
                           open_dataset(site.test_path, NAMES, cfg.data))["probe_labels"]
    got = evaluate_site(site, probes=True)
    assert got["probe_metric/auroc"] == 1.0 and "unlabelled" not in got
    for m in NAMES:
        want = central["labels"][m]
        for c in ("label.even", "label.big", "label.zero"):
            assert got[f"probe_label/{m}/{c}"] == pytest.approx(want[c]["auroc"], abs=1e-9)
        assert got[f"probe/{m}"] == pytest.approx(central["per_modality"][m], abs=1e-9)
        assert got[f"probe_labels/{m}"] == 3 and got[f"chance/{m}"] == 0.5
    # a deployed site reports the columns its node config's eval-labels allows
    policy = SitePolicy(eval_labels=("label.even", "label.z*"))
    got = evaluate_site(site, probes=True, policy=policy)
    assert {k for k in got if k.startswith("probe_label/m0/")} == {
        "probe_label/m0/label.even", "probe_label/m0/label.zero"}
    assert got["probe/m0"] == pytest.approx(np.mean(
        [central["labels"]["m0"][c]["auroc"] for c in ("label.even", "label.zero")]))


def test_the_summary_names_the_metric_and_the_labels(site):
    from mmvm.federation.loop import FederationResult
    from mmvm.federation.report import summary

    ev = {"site": "hospital-a", "modalities": NAMES, **evaluate_site(site, probes=True)}
    text = summary(FederationResult(evaluation={"k": ev}), "run", {}, None)
    assert f"{ev['probe/m0']:.3f} (auroc, mean of 3 labels; chance 0.50)" in text, text


def test_data_label_must_be_allowed_for_judges_even_beside_allowed_eval_labels(tmp_path):
    """A submitter named an allowed column in eval.labels and a forbidden one as
    data.label: the site trained its coherence judges on the forbidden column and
    reported their accuracy and coherence against it. Now neither is computed, and
    the describe reply does not say whether the site has that column."""
    import dataclasses

    from mmvm.federation.channel import PlainChannel
    from mmvm.federation.endpoint import Endpoint
    from mmvm.federation.messages import DescribeRequest
    from mmvm.federation.posteriors import encode_table

    cfg = findings_digits(tmp_path, NAMES)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, label="label.even"),
                              eval=dataclasses.replace(cfg.eval, labels=("label.big",),
                                                       classifier_epochs=1))
    site = Site(cfg, "hospital-a", tmp_path / "train.parquet", tmp_path / "test.parquet")
    policy = SitePolicy(eval_labels=("label.big",), state=str(tmp_path / "state"))
    said = []
    got = evaluate_site(site, probes=True, cross=encode_table({}), policy=policy,
                        log=said.append)
    assert not [k for k in got if k.startswith(("judge_accuracy", "coherence"))], got
    assert "probe_label/m0/label.big" in got and "probe_label/m0/label.even" not in got
    assert any("data.label 'label.even' is not in the node config's eval-labels" in s
               for s in said)
    assert Endpoint(site, PlainChannel(), policy).handle(DescribeRequest()).labelled is False
    # allowed, the same evaluation trains the judges and scores coherence
    allowed = SitePolicy(eval_labels=("label.big", "label.even"),
                         state=str(tmp_path / "state"))
    got = evaluate_site(site, probes=True, cross=encode_table({}), policy=allowed)
    assert "judge_accuracy/m0" in got and "coherence/m0->m1" in got
