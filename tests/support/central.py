"""A federated run's cross-site numbers against a central evaluation of the model it
collected, on the joined test file (tests of the cross-site evaluation)."""

from __future__ import annotations

import dataclasses
import math

import torch

from mmvm.classifiers import load_or_train, recipe_for
from mmvm.data import open_dataset
from mmvm.evaluation import coherence
from mmvm.imputation import imputation_nll
from mmvm.training import build_model
from tests.support.federate import MODALITIES


def judged_config(data_root):
    """The tiny PolyMNIST config for one epoch, its judges trained 3 epochs without
    the image step floor (the tests check exactness, not the judges' skill)."""
    from tests.conftest import _tiny_config

    cfg = _tiny_config(data_root, epochs=1)
    return dataclasses.replace(cfg, eval=dataclasses.replace(
        cfg.eval, classifier_min_image_steps=0))


def central(cfg, result, data_root):
    """The collected model and the joined test set."""
    model = build_model(cfg)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in result.model_state.items()})
    return model, open_dataset(data_root / "test.parquet", MODALITIES, cfg.data)


def close(got: dict, want: dict, rel: float = 1e-4) -> None:
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    for k in want:
        assert math.isclose(got[k], want[k], rel_tol=rel), (k, got[k], want[k])


def imputation_matches(cfg, result, data_root, total: bool = True) -> None:
    """Pairs, rest (and the total) equal ``imputation_nll`` with means."""
    model, test = central(cfg, result, data_root)
    want = imputation_nll(model, test, "mmvm", sample=False)
    got = result.cross_site["imputation"]
    close(got["pairs"], want["pairs"])
    close(got["rest"], want["rest"])
    if total:
        assert math.isclose(got["total"], want["total"], rel_tol=1e-4)


def coherence_matches(cfg, sites, result, data_root) -> dict:
    """Every pair within one test sample's judgement of ``coherence`` with means and
    the judges each site trained (cached beside its data); returns the central one."""
    model, test = central(cfg, result, data_root)
    judges = {}
    for site in sites.values():
        judges.update(load_or_train(site.train_path, site.test_path, site.names,
                                    cfg=recipe_for(cfg)).models)
    want = coherence(model, test, judges, "mmvm", sample=False)
    got = result.cross_site["coherence"]
    assert got["pairs"].keys() == want["pairs"].keys()
    for k, v in want["pairs"].items():
        assert abs(got["pairs"][k] - v) <= 1 / len(test) + 1e-9, (k, got["pairs"][k], v)
    return want
