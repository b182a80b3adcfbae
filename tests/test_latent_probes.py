"""The aggregated probe with per-label probes (``eval.labels``): the authors' code
evaluates both the unimodal and the aggregated latents on MIMIC-CXR, so AVG, PoE and
MoPoE get an aggregated AUROC; MMVM's aggregation is its unimodal means."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mmvm.data import open_dataset
from mmvm.evaluation import evaluate_run
from mmvm.training import build_model
from tests.support.evaluation_data import findings_digits


@pytest.mark.parametrize("method", ["mmvm", "poe"])
def test_per_label_probes_have_an_aggregated_reading(tmp_path, method):
    cfg = findings_digits(tmp_path)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, method=method))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    names = [m.name for m in cfg.model.modalities]
    res = evaluate_run(cfg, model, open_dataset(tmp_path / "train.parquet", names, cfg.data),
                       open_dataset(tmp_path / "test.parquet", names, cfg.data))
    probe, agg = res["probe"], res["probe_aggregated"]
    assert set(agg) == set(probe) == {"m0", "m1", "mean"}
    assert all(0.0 <= v <= 1.0 for v in agg.values()), agg
    if method == "mmvm":  # decodes z_m: nothing aggregated, the same probe
        assert agg == probe
    else:  # PoE: both modalities read the joint posterior, so one latent for both
        assert agg["m0"] == pytest.approx(agg["m1"]) and not math.isclose(
            agg["mean"], probe["mean"])
