"""The reconstruction's floor: one constant "reconstruction" for every test sample,
checked against its closed form."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from mmvm.data.dataset import MultimodalDataset
from mmvm.recon_baseline import baseline_nll
from mmvm.training import build_model
from tests.support.evaluation_data import NAMES, digit_vectors, vector_config


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace", "mse"])
def test_the_constant_is_the_training_median_or_mean_and_its_nll_the_closed_form(
        tmp_path, likelihood):
    paths = digit_vectors(tmp_path)
    cfg = vector_config(tmp_path)
    mods = [dataclasses.replace(m, likelihood=likelihood) for m in cfg.model.modalities]
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, modalities=mods))
    model = build_model(cfg)
    train = MultimodalDataset.from_parquet([paths["train"]], NAMES)
    test = MultimodalDataset.from_parquet([paths["test"]], NAMES)
    got = baseline_nll(model, train, test, batch_size=100)  # chunks of the test split
    x_tr = train.tensors["m0"].numpy()
    x_te = test.tensors["m0"].numpy()
    assert len(x_tr) > 256  # the constant is fitted on 256 rows of it
    from mmvm.subsample import keep_rows

    fit = x_tr[keep_rows(len(x_tr), 256)]
    s, d = mods[0].scale, x_te.shape[1]
    if likelihood == "laplace":
        c = np.sort(fit, 0)[(len(fit) - 1) // 2]  # a median (torch's: the lower one)
        want = (np.abs(x_te - c).sum(1) / s + d * math.log(2 * s)).mean()
    else:
        c = fit.mean(0)
        sq = ((x_te - c) ** 2).sum(1)
        want = (sq / (2 * s * s) + d * (math.log(s) + 0.5 * math.log(2 * math.pi))
                ).mean() if likelihood == "gaussian" else sq.mean()
    assert got["m0"] == pytest.approx(want, rel=1e-5)
    assert set(got) == set(NAMES)


def test_a_decoder_no_better_than_the_constant_is_warned_of():
    from mmvm.chance import evaluation_warnings

    said = evaluation_warnings({"reconstruction": {
        "per_modality": {"frontal": 1846.8, "lateral": 1700.0},
        "baseline": {"frontal": 1845.1, "lateral": 1781.2}}})
    assert len(said) == 1 and said[0].startswith(
        "the frontal reconstruction NLL 1846.8 is no better than 1845.1, that of one "
        "constant output for every sample")
    both = evaluation_warnings({"reconstruction": {  # alike: one line for the two
        "per_modality": {"frontal": 1846.8, "lateral": 1781.9},
        "baseline": {"frontal": 1845.1, "lateral": 1781.2}}})
    assert both == ["the reconstruction NLLs frontal 1846.8, lateral 1781.9 are no better "
                    "than those of one constant output for every sample (frontal 1845.1, "
                    "lateral 1781.2; the training data's median or mean at each pixel or "
                    "value): the decoders reproduce the average sample, not this one"]
    close = evaluation_warnings({"reconstruction": {"per_modality": {"rat1": 66.72},
                                                    "baseline": {"rat1": 66.78}}})
    assert close[0].startswith("the rat1 reconstruction NLL 66.7 is within 0.5 % of "
                               "66.8, that of one constant output")  # not "no better"
    from mmvm.chance import apart
    assert apart(34.31, 34.34) == ("34.31", "34.34")  # not 34.3 and 34.3
    assert apart(34.3004, 34.3001) == ("34.3004", "34.3001")
    assert apart(2.0, 2.0) == ("2.0000", "2.0000")  # equal: as far as it looks
