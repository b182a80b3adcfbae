"""MIMIC-CXR end to end: prepare a tiny tree at 224 x 224, train configs/mimic_cxr.toml
(res_image, frontal and lateral sites joined by sample id) at width 4, score AUROC
latent probes per CheXpert finding and per view; one federated window with a
frontal site and a lateral site.

The fixture's images and labels are unrelated random draws, so the probes can only
be checked for being computed and in range, not for learning.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mmvm.config import load_config
from mmvm.data import open_dataset
from mmvm.data.dataset import MultimodalDataset
from mmvm.data.prepare.mimic_cxr import CHEXPERT, label_column, prepare_mimic_cxr
from mmvm.evaluation import evaluate_run
from mmvm.federation.local import run_local
from mmvm.federation.settings import settings_for
from mmvm.training import train
from tests.support.published import mimic_tree

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "mimic_cxr.toml"
VIEWS = ["frontal", "lateral"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mimic")
    mimic_tree(root / "src", extra=40, labels="random")
    prepare_mimic_cxr(root / "src", root / "data", size=224, seed=0)
    return root / "data"


def _cfg(data: Path, out: Path, *overrides: str):
    return load_config(CONFIG, [
        f"data.root={data}", f"train.out_dir={out}", "train.device=cpu",
        "model.latent_dim=8", "model.modalities.frontal.width=4",
        "model.modalities.lateral.width=4", "train.batch_size=8", "train.epochs=1",
        "train.lr=2e-3", "eval.batch_size=32", *overrides])


def test_config_joins_the_two_view_sites(prepared, tmp_path):
    cfg = _cfg(prepared, tmp_path)
    assert cfg.data.files("train") == [prepared / v / "train.parquet" for v in VIEWS]
    assert [m.network for m in cfg.model.modalities] == ["res_image", "res_image"]
    assert [label_column(c) for c in CHEXPERT] == list(cfg.eval.labels)
    data = open_dataset(cfg.data.files("train"), VIEWS, cfg.data)
    assert data.names == VIEWS and bool(data.mask.all())
    assert data.shapes == {v: (1, 224, 224) for v in VIEWS}


def test_central_training_then_auroc_probes_per_finding_and_view(prepared, tmp_path):
    cfg = _cfg(prepared, tmp_path / "run", "train.epochs=2")
    data = open_dataset(cfg.data.files("train"), VIEWS, cfg.data)
    result = train(cfg, data, show_progress=False)
    losses = [r["loss"] for r in result.history]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert losses[1] < losses[0]
    test = MultimodalDataset.from_parquet(cfg.data.files("test"), VIEWS, cfg.data.label)
    ev = evaluate_run(cfg, result.model, data, test)
    scores = ev["probe_labels"]
    assert ev["probe_metric"] == scores["metric"] == "auroc"
    for view in VIEWS:
        per = scores["labels"][view]
        assert list(per) == list(cfg.eval.labels)  # the 14 findings, in order
        finite = [r["auroc"] for r in per.values() if not math.isnan(r["auroc"])]
        assert finite and all(0.0 <= v <= 1.0 for v in finite)
        assert all(r["n_test"] <= len(test) for r in per.values())
        assert 0.0 <= ev["probe"][view] <= 1.0
    assert 0.0 <= ev["probe"]["mean"] <= 1.0
    assert all(math.isfinite(v) for v in ev["reconstruction"]["per_modality"].values())


def test_one_federated_window_with_a_frontal_and_a_lateral_site(prepared, tmp_path):
    cfg = _cfg(prepared, tmp_path / "fed")
    files = {v: (str(prepared / v / "train.parquet"), str(prepared / v / "test.parquet"))
             for v in VIEWS}
    res, sites = run_local(settings_for(cfg, exchange="round", float16=False), files)
    assert len(res.history) == 1  # one epoch = one window
    assert {k: s.names for k, s in sites.items()} == {v: [v] for v in VIEWS}
    for ev in res.evaluation.values():
        (m,) = ev["modalities"]
        assert math.isfinite(ev[f"recon_nll/{m}"])
    assert res.bytes_total > 0
