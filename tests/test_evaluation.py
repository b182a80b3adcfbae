"""Evaluation protocol: probes, coherence, reconstruction NLL.

Oracles: probes on hand-made latents (separable -> 1, random -> chance); an "oracle"
model whose encoders and decoders are identities on one-hot class vectors, judged by
an argmax classifier, so coherence and the Gaussian NLL are known in closed form;
then short real training runs (vector digits, PolyMNIST look-alike). The judges'
cache is in test_classifiers.py, ``mmvm evaluate`` in tests/cli/test_evaluate.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmvm.aggregation import available_methods
from mmvm.config import config_from_dict
from mmvm.data.dataset import MultimodalDataset
from mmvm.evaluation import (
    coherence,
    encode_aggregated,
    encode_dataset,
    evaluate_run,
    fit_probe,
    present_labels,
    probe_accuracy,
    reconstruction_nll,
)
from tests.support.evaluation_data import (
    ARGMAX,
    NAMES,
    digit_vectors,
    onehot_dataset,
    oracle_model,
    vector_config,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------ probes
def test_probe_separable_latents_score_one():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 8)) * 5

    def split(n):
        y = rng.integers(0, 10, n)
        return {m: centres[y] + 0.1 * rng.normal(size=(n, 8)) for m in NAMES}, y

    (tr, ytr), (te, yte) = split(300), split(200)
    acc = probe_accuracy(tr, ytr, te, yte)
    assert all(acc[m] > 0.99 for m in NAMES)
    assert acc["all"] > 0.99 and acc["mean"] > 0.99


def test_probe_random_latents_near_chance_and_all_detects_unshared_space():
    rng = np.random.default_rng(1)
    ytr, yte = rng.integers(0, 10, 600), rng.integers(0, 10, 600)
    tr = {m: rng.normal(size=(600, 8)) for m in NAMES}
    te = {m: rng.normal(size=(600, 8)) for m in NAMES}
    acc = probe_accuracy(tr, ytr, te, yte)
    assert all(abs(acc[m] - 0.1) < 0.06 for m in NAMES)
    # separable per modality, but each modality puts the classes elsewhere: per-modality
    # probes are perfect, the shared-space probe ("all") is not
    # (2-D latents as in the hippocampus figure; classes on a circle, in a different
    # order per modality: separable per modality, 30 clusters jointly not)
    angle = {m: 2 * np.pi * rng.permutation(10) / 10 for m in NAMES}
    c = {m: 5 * np.column_stack([np.cos(a), np.sin(a)]) for m, a in angle.items()}
    tr = {m: c[m][ytr] + 0.01 * rng.normal(size=(600, 2)) for m in NAMES}
    te = {m: c[m][yte] + 0.01 * rng.normal(size=(600, 2)) for m in NAMES}
    acc = probe_accuracy(tr, ytr, te, yte, max_train=300)
    assert acc["mean"] > 0.99 and acc["all"] < 0.8


def test_fit_probe_standardized_ignores_the_latents_scale_and_offset():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 400)
    x = rng.normal(size=(400, 4)) + y[:, None]
    xt = rng.normal(size=(200, 4)) + rng.integers(0, 3, 200)[:, None]
    scale, shift = np.array([1e3, 1e-2, 1.0, 50.0]), np.array([5.0, -3.0, 0.0, 1e3])
    a = fit_probe(x, y, standardize=True).predict_proba(xt)
    b = fit_probe(x * scale + shift, y, standardize=True).predict_proba(xt * scale + shift)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_fit_probe_default_is_the_papers_raw_logistic_regression():
    """The authors' probe: LogisticRegression(max_iter=10000) on the raw means, no
    scaler: the default must give exactly its predictions."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    x = (rng.normal(size=(300, 4)) + y[:, None]) * np.array([10.0, 0.1, 1.0, 3.0])
    xt = rng.normal(size=(100, 4)) * 3
    raw = fit_probe(x, y)
    assert raw.max_iter == 10_000 and raw.coef_.shape == (3, 4)
    ref = LogisticRegression(max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(raw.predict_proba(xt), ref.predict_proba(xt), atol=1e-10)
    std = fit_probe(x, y, standardize=True)  # differs: the penalty acts on other units
    assert np.abs(std.predict_proba(xt) - ref.predict_proba(xt)).max() > 1e-4


def test_probe_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        probe_accuracy({"m0": np.zeros((5, 2))}, np.zeros(4),
                       {"m0": np.zeros((3, 2))}, np.zeros(3))


# ------------------------------------------------------------------ oracle model
@pytest.mark.parametrize("method", available_methods())
def test_coherence_of_oracle_model_is_one_for_every_method(method):
    model = oracle_model(private_dim=2 if method == "mmvaeplus" else 0)
    res = coherence(model, onehot_dataset(), ARGMAX, method, batch_size=16)
    assert res["mean"] == 1.0 and res["self"] == 1.0
    assert set(res["pairs"]) == {f"{s}->{t}" for s in NAMES for t in NAMES}


def test_coherence_counts_each_pair_and_only_present_sources():
    mask = np.ones((50, 3), bool)
    mask[:20, 0] = False  # m0 missing in 20 rows
    res = coherence(oracle_model(perm_m1=True), onehot_dataset(mask=mask), ARGMAX, "mmvm")
    # decoder m1 shifts every class by one: all pairs into m1 are wrong, all others right
    for s in NAMES:
        for t in NAMES:
            assert res["pairs"][f"{s}->{t}"] == (0.0 if t == "m1" else 1.0)
    assert res["mean"] == pytest.approx(4 / 6)
    assert res["matrix"][0] == [1.0, 0.0, 1.0]


def test_encode_dataset_returns_present_rows_only():
    mask = np.ones((30, 3), bool)
    mask[::3, 2] = False
    ds = onehot_dataset(30, mask)
    mu = encode_dataset(oracle_model(), ds, batch_size=7)
    assert mu["m0"].shape == (30, 10) and mu["m2"].shape == (20, 10)
    labels = present_labels(ds, NAMES)
    assert (mu["m2"].argmax(1) == labels["m2"]).all()


def test_encode_dataset_reads_each_modalitys_mask_by_name_not_position():
    """Data holding the model's modalities in another order (a site's file, a
    select()) must pair each modality's rows with its own mask column: m2's absent
    rows are skipped, m0's kept, whatever the column order."""
    mask = np.ones((30, 3), bool)
    mask[::3, 2] = False
    ds = onehot_dataset(30, mask)
    reordered = ds.select(["m2", "m0", "m1"])
    assert reordered.names == ["m2", "m0", "m1"]
    want, got = encode_dataset(oracle_model(), ds), encode_dataset(oracle_model(), reordered)
    for m in NAMES:
        np.testing.assert_array_equal(got[m], want[m])
    assert got["m2"].shape == (20, 10) and got["m0"].shape == (30, 10)


def test_sampled_coherence_matches_the_gaussian_closed_form():
    """Oracle encoders with posterior variance 1: decoding a sample z = e_y + eps and
    judging by argmax is right with probability int phi(t) Phi(t + 1)^9 dt. Each
    generation draws its own z (the authors' code): pairs from one source differ."""
    from scipy import integrate, stats

    model = oracle_model()
    with torch.no_grad():
        for name in NAMES:
            model.encoders[name].logvar.bias.fill_(0.0)  # q(z | x) = N(e_y, I)
    ds = onehot_dataset(3000)
    exact, _ = integrate.quad(lambda t: stats.norm.pdf(t) * stats.norm.cdf(t + 1) ** 9,
                              -10, 10)
    res = coherence(model, ds, ARGMAX, "mmvm", batch_size=500, seed=1)
    se = math.sqrt(exact * (1 - exact) / len(ds))
    for pair, acc in res["pairs"].items():
        assert abs(acc - exact) < 4 * se, (pair, acc, exact)
    assert len({res["pairs"][f"m0->{t}"] for t in NAMES}) == 3  # fresh draws per target
    again = coherence(model, ds, ARGMAX, "mmvm", batch_size=500, seed=1)
    assert again["pairs"] == res["pairs"]  # seeded
    mean = coherence(model, ds, ARGMAX, "mmvm", batch_size=500, sample=False)
    assert mean["mean"] == 1.0  # the posterior mean is e_y itself


def _shifted_dataset(n=40, mask=None) -> MultimodalDataset:
    """Modality k holds the one-hot of (y + k) mod 10."""
    y = np.arange(n) % 10
    x = {m: np.eye(10, dtype=np.float32)[(y + k) % 10] for k, m in enumerate(NAMES)}
    mask = np.ones((n, 3), bool) if mask is None else mask
    return MultimodalDataset([f"s{i}" for i in range(n)], x, {m: 1.0 for m in NAMES},
                             mask, y)


@pytest.mark.parametrize("method", ["mmvm", "independent", "avg", "poe"])
def test_aggregated_latents_are_the_methods_joint_mean(method):
    """Oracle encoders give mu_m = e_{y+k} with equal variances: AVG's and PoE's joint
    mean is the average over the present modalities; MMVM and independent VAEs keep
    mu_m (their aggregated probe is their unimodal one)."""
    mask = np.ones((40, 3), bool)
    mask[::4, 1] = False
    ds = _shifted_dataset(mask=mask)
    agg = encode_aggregated(oracle_model(), ds, method, batch_size=9)
    own = encode_dataset(oracle_model(), ds, batch_size=9)
    x = {m: ds.tensors[m].numpy() for m in NAMES}
    present = ds.mask.numpy()
    joint = sum(x[m] * present[:, [k]] for k, m in enumerate(NAMES)) / present.sum(1, keepdims=True)
    for k, m in enumerate(NAMES):
        expected = own[m] if method in ("mmvm", "independent") else joint[present[:, k]]
        np.testing.assert_allclose(agg[m], expected, atol=1e-5)


def test_evaluate_run_reports_the_aggregated_probe_and_protocol(tmp_path):
    """``probe_aggregated`` sits next to the unimodal probe; on the shifted one-hots a
    joint mean of three different codes still names the class (perfect probe)."""
    cfg = config_from_dict({"model": {"method": "avg", "latent_dim": 10, "modalities": {
        m: {"kind": "vector", "shape": [10], "likelihood": "gaussian", "width": 10,
            "layers": 1} for m in NAMES}}})
    ds = _shifted_dataset(60)
    res = evaluate_run(cfg, oracle_model(), ds, ds)
    assert res["probe"]["mean"] == 1.0 and res["probe_aggregated"]["mean"] == 1.0
    assert res["probe_standardized"] is False and res["coherence_sampled"] is True


@pytest.mark.parametrize("method", ["mmvm", "poe", "mopoe"])
def test_reconstruction_nll_of_exact_decoder_is_gaussian_normaliser(method):
    # decoder output = x, so -log N(x | x, 1) = 10 * log(2 pi) / 2 per modality; w = (1, 2, 1)
    res = reconstruction_nll(oracle_model(weights=(1.0, 2.0, 1.0)), onehot_dataset(),
                             method, batch_size=16)
    unit = 5 * math.log(2 * math.pi)
    assert res["per_modality"]["m0"] == pytest.approx(unit, rel=1e-4)
    assert res["per_modality"]["m1"] == pytest.approx(2 * unit, rel=1e-4)
    assert res["total"] == pytest.approx(4 * unit, rel=1e-4)


# ------------------------------------------------------------------ real training
@pytest.mark.slow
def test_short_training_run_learns_a_linearly_readable_label(tmp_path):
    from mmvm.classifiers import classifiers_for
    from mmvm.training import train

    paths = digit_vectors(tmp_path)
    cfg = vector_config(tmp_path)
    tr = MultimodalDataset.from_parquet(paths["train"], NAMES)
    te = MultimodalDataset.from_parquet(paths["test"], NAMES)
    result = train(cfg, tr, show_progress=False)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    clf = classifiers_for(cfg)
    assert min(clf.test_accuracy.values()) > 0.85  # real-data classifiers work
    assert classifiers_for(cfg).paths == clf.paths  # second call: from the cache
    out = evaluate_run(cfg, result.model, tr, te, clf)
    assert out["probe"]["mean"] > 0.6  # chance is 0.1
    assert out["coherence"]["mean"] > 0.2  # the mixture prior aligns the modalities
    assert math.isfinite(out["reconstruction"]["total"])
    import json

    json.dumps(out)  # serialisable
