"""Bimodal CelebA end to end: prepare a tiny tree in the published layout at 64 x 64,
train configs/celeba.toml (res_image + attribute MLP with a bernoulli likelihood) at
width 4, score per-attribute probes by average precision and accuracy; one
federated window with an image site and an attribute site.

The fixture's faces are all alike and its attributes random, so the probes can only
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
from mmvm.data.prepare.celeba import prepare_celeba
from mmvm.data.sites import site_layout, split_sites
from mmvm.evaluation import evaluate_run
from mmvm.federation.local import run_local
from mmvm.federation.settings import settings_for
from mmvm.training import train
from tests.support.published import celeba_tree

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "celeba.toml"
NAMES = ["image", "attributes"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("celeba")
    celeba_tree(root / "src", n=26, n_train=18, n_val=2)
    prepare_celeba(root / "src", root / "data", size=64)
    return root / "data"


def _cfg(data: Path, out: Path, *overrides: str):
    return load_config(CONFIG, [
        f"data.root={data}", f"train.out_dir={out}", "train.device=cpu",
        "model.latent_dim=8", "model.modalities.image.width=4",
        "model.modalities.attributes.width=16", "train.batch_size=6", "train.epochs=1",
        "train.lr=2e-3", *overrides])


def test_central_training_then_average_precision_per_attribute(prepared, tmp_path):
    cfg = _cfg(prepared, tmp_path / "run", "train.epochs=2")
    assert [m.likelihood for m in cfg.model.modalities] == ["laplace", "bernoulli"]
    data = open_dataset(cfg.data.files("train"), NAMES, cfg.data)
    assert data.labels is None  # no single label column: per-attribute probes instead
    result = train(cfg, data, show_progress=False)
    losses = [r["loss"] for r in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[1] < losses[0]
    generated = result.model.generate("attributes", torch.zeros(2, 8))
    assert generated.shape == (2, 40) and bool(((generated > 0) & (generated < 1)).all())
    test = MultimodalDataset.from_parquet(cfg.data.files("test"), NAMES, cfg.data.label)
    ev = evaluate_run(cfg, result.model, data, test)
    scores = ev["probe_labels"]
    assert scores["metric"] == "ap"
    for m in NAMES:
        per = scores["labels"][m]
        assert len(per) == 40 and "label.male" in per and "label.5_o_clock_shadow" in per
        aps = [r["ap"] for r in per.values() if not math.isnan(r["ap"])]
        accs = [r["accuracy"] for r in per.values() if not math.isnan(r["accuracy"])]
        assert len(aps) > 20 and all(0.0 <= v <= 1.0 for v in aps + accs)
        assert 0.0 <= ev["probe"][m] <= 1.0
    assert 0.0 <= scores["mean_accuracy"] <= 1.0
    assert all(math.isfinite(v) for v in ev["reconstruction"]["per_modality"].values())


def test_one_federated_window_with_an_image_site_and_an_attribute_site(prepared, tmp_path):
    cfg = _cfg(prepared, tmp_path / "fed")
    specs = site_layout("vertical", NAMES)
    split = split_sites([prepared / "train.parquet", prepared / "test.parquet"],
                        tmp_path / "sites", specs)
    files = {name: (f["train"], f["test"]) for name, f in split.items()}
    res, sites = run_local(settings_for(cfg, exchange="round", float16=False), files)
    assert len(res.history) == 1
    assert sorted(s.names[0] for s in sites.values()) == sorted(NAMES)
    for ev in res.evaluation.values():
        (m,) = ev["modalities"]
        assert math.isfinite(ev[f"recon_nll/{m}"])
