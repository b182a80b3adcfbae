"""Evaluation protocol: probes, coherence, reconstruction NLL, classifiers, CLI.

Oracles: probes on hand-made latents (separable -> 1, random -> chance); an "oracle"
model whose encoders and decoders are identities on one-hot class vectors, judged by
an argmax classifier, so coherence and the Gaussian NLL are known in closed form;
then short real training runs (vector digits, PolyMNIST look-alike).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mmvm.aggregation import available_methods
from mmvm.config import ModalitySpec, config_from_dict
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
from mmvm.model import MultimodalVAE

torch.set_num_threads(1)
NAMES = ["m0", "m1", "m2"]


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
def _oracle_model(weights=(1.0, 1.0, 1.0), perm_m1: bool = False,
                  private_dim: int = 0) -> MultimodalVAE:
    """Encoders/decoders that are identities on one-hot vectors; q has variance e^-30.
    With ``private_dim`` (MMVAE+) the codes get private dimensions that encoders set
    to 0 and decoders ignore."""
    specs = [ModalitySpec(m, "vector", (10,), likelihood="gaussian", scale=1.0, weight=w,
                          width=10, layers=1) for m, w in zip(NAMES, weights, strict=True)]
    model = MultimodalVAE(specs, latent_dim=10, private_dim=private_dim)
    eye, pad = torch.eye(10), torch.zeros(private_dim, 10)
    with torch.no_grad():
        for name in NAMES:
            enc, dec = model.encoders[name], model.decoders[name]
            enc.body[1][0].weight.copy_(eye), enc.body[1][0].bias.zero_()
            enc.mu.weight.copy_(torch.cat([eye, pad])), enc.mu.bias.zero_()
            enc.logvar.weight.zero_(), enc.logvar.bias.fill_(-30.0)
            dec.body[0][0].weight.copy_(torch.cat([eye, pad.T], 1)), dec.body[0][0].bias.zero_()
            out = eye.roll(1, 0) if (perm_m1 and name == "m1") else eye  # class c -> c+1
            dec.body[1].weight.copy_(out), dec.body[1].bias.zero_()
    return model.eval()


def _onehot_dataset(n=50, mask=None) -> MultimodalDataset:
    y = np.arange(n) % 10
    x = np.eye(10, dtype=np.float32)[y]
    mask = np.ones((n, 3), bool) if mask is None else mask
    return MultimodalDataset([f"s{i}" for i in range(n)], {m: x for m in NAMES},
                             {m: 1.0 for m in NAMES}, mask, y)


ARGMAX = {m: nn.Flatten() for m in NAMES}  # logits = the vector itself


@pytest.mark.parametrize("method", available_methods())
def test_coherence_of_oracle_model_is_one_for_every_method(method):
    model = _oracle_model(private_dim=2 if method == "mmvaeplus" else 0)
    res = coherence(model, _onehot_dataset(), ARGMAX, method, batch_size=16)
    assert res["mean"] == 1.0 and res["self"] == 1.0
    assert set(res["pairs"]) == {f"{s}->{t}" for s in NAMES for t in NAMES}


def test_coherence_counts_each_pair_and_only_present_sources():
    mask = np.ones((50, 3), bool)
    mask[:20, 0] = False  # m0 missing in 20 rows
    res = coherence(_oracle_model(perm_m1=True), _onehot_dataset(mask=mask), ARGMAX, "mmvm")
    # decoder m1 shifts every class by one: all pairs into m1 are wrong, all others right
    for s in NAMES:
        for t in NAMES:
            assert res["pairs"][f"{s}->{t}"] == (0.0 if t == "m1" else 1.0)
    assert res["mean"] == pytest.approx(4 / 6)
    assert res["matrix"][0] == [1.0, 0.0, 1.0]


def test_encode_dataset_returns_present_rows_only():
    mask = np.ones((30, 3), bool)
    mask[::3, 2] = False
    ds = _onehot_dataset(30, mask)
    mu = encode_dataset(_oracle_model(), ds, batch_size=7)
    assert mu["m0"].shape == (30, 10) and mu["m2"].shape == (20, 10)
    labels = present_labels(ds, NAMES)
    assert (mu["m2"].argmax(1) == labels["m2"]).all()


def test_encode_dataset_reads_each_modalitys_mask_by_name_not_position():
    """Data holding the model's modalities in another order (a site's file, a
    select()) must pair each modality's rows with its own mask column: m2's absent
    rows are skipped, m0's kept, whatever the column order."""
    mask = np.ones((30, 3), bool)
    mask[::3, 2] = False
    ds = _onehot_dataset(30, mask)
    reordered = ds.select(["m2", "m0", "m1"])
    assert reordered.names == ["m2", "m0", "m1"]
    want, got = encode_dataset(_oracle_model(), ds), encode_dataset(_oracle_model(), reordered)
    for m in NAMES:
        np.testing.assert_array_equal(got[m], want[m])
    assert got["m2"].shape == (20, 10) and got["m0"].shape == (30, 10)


def test_sampled_coherence_matches_the_gaussian_closed_form():
    """Oracle encoders with posterior variance 1: decoding a sample z = e_y + eps and
    judging by argmax is right with probability int phi(t) Phi(t + 1)^9 dt. Each
    generation draws its own z (the authors' code): pairs from one source differ."""
    from scipy import integrate, stats

    model = _oracle_model()
    with torch.no_grad():
        for name in NAMES:
            model.encoders[name].logvar.bias.fill_(0.0)  # q(z | x) = N(e_y, I)
    ds = _onehot_dataset(3000)
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
    agg = encode_aggregated(_oracle_model(), ds, method, batch_size=9)
    own = encode_dataset(_oracle_model(), ds, batch_size=9)
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
    res = evaluate_run(cfg, _oracle_model(), ds, ds)
    assert res["probe"]["mean"] == 1.0 and res["probe_aggregated"]["mean"] == 1.0
    assert res["probe_standardized"] is False and res["coherence_sampled"] is True


@pytest.mark.parametrize("method", ["mmvm", "poe", "mopoe"])
def test_reconstruction_nll_of_exact_decoder_is_gaussian_normaliser(method):
    # decoder output = x, so -log N(x | x, 1) = 10 * log(2 pi) / 2 per modality; w = (1, 2, 1)
    res = reconstruction_nll(_oracle_model(weights=(1.0, 2.0, 1.0)), _onehot_dataset(),
                             method, batch_size=16)
    unit = 5 * math.log(2 * math.pi)
    assert res["per_modality"]["m0"] == pytest.approx(unit, rel=1e-4)
    assert res["per_modality"]["m1"] == pytest.approx(2 * unit, rel=1e-4)
    assert res["total"] == pytest.approx(4 * unit, rel=1e-4)


# ------------------------------------------------------------------ real training
def _digit_vectors(tmp_path):
    """sklearn's 8x8 digits as three vector modalities paired within class (a small,
    translation-free PolyMNIST analogue), written as train/test Parquet files."""
    from sklearn.datasets import load_digits

    from mmvm.data.store import write_site_table

    d = load_digits()
    rng = np.random.default_rng(0)
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    paths = {}
    for split, rows in (("train", np.arange(0, 1400)), ("test", np.arange(1400, 1797))):
        mods = {m: np.empty((len(rows), 64), np.float32) for m in NAMES}
        for c in range(10):
            idx = rows[y[rows] == c]
            for m in NAMES:
                mods[m][y[rows] == c] = x[rng.permutation(idx)]
        ids = [f"{split}-{i}" for i in range(len(rows))]
        paths[split] = write_site_table(tmp_path / f"{split}.parquet", ids, mods,
                                        {"label": y[rows]}, {"name": "digit-vectors"})
    return paths


def _vector_config(tmp_path, **train):
    mods = {m: {"kind": "vector", "shape": [64], "likelihood": "gaussian", "scale": 0.3,
                "width": 64, "layers": 1} for m in NAMES}
    return config_from_dict({
        "data": {"root": str(tmp_path)},
        "model": {"method": "mmvm", "latent_dim": 8, "modalities": mods},
        "train": {"epochs": 6, "batch_size": 64, "lr": 2e-3, "device": "cpu",
                  "out_dir": str(tmp_path / "run"), "num_threads": 1, **train},
        "eval": {"probe_train": 1000, "classifier_epochs": 30, "batch_size": 256},
    })


@pytest.mark.slow
def test_short_training_run_learns_a_linearly_readable_label(tmp_path):
    from mmvm.classifiers import classifiers_for
    from mmvm.training import train

    paths = _digit_vectors(tmp_path)
    cfg = _vector_config(tmp_path)
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


@pytest.mark.slow
def test_polymnist_lookalike_run_end_to_end(tmp_path):
    """Image modalities: loss falls, evaluation is complete (probes of a barely
    trained conv VAE on translated digits are only modestly above chance)."""
    from mmvm.config import load_config
    from mmvm.data.polymnist import make_polymnist
    from mmvm.training import train

    p = make_polymnist(tmp_path / "pm", seed=0, n_train=300, n_test=100,
                       digits_source="sklearn")
    sets = ["data.root=" + repr(str(tmp_path / "pm")), "model.latent_dim=16",
            "train.epochs=3", "train.batch_size=32", "train.lr=1e-3", 'train.device="cpu"',
            "train.out_dir=" + repr(str(tmp_path / "run")), "train.num_threads=1"]
    sets += [f"model.modalities.{m}.width=8" for m in NAMES]
    cfg = load_config("configs/polymnist.toml", sets)
    tr = MultimodalDataset.from_parquet(p["train"], NAMES)
    te = MultimodalDataset.from_parquet(p["test"], NAMES)
    result = train(cfg, tr, show_progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    out = evaluate_run(cfg, result.model, tr, te, None)
    assert set(out["probe"]) == {*NAMES, "mean", "all"}
    assert 0.0 <= out["probe"]["mean"] <= 1.0
    assert out["reconstruction"]["total"] == pytest.approx(
        sum(out["reconstruction"]["per_modality"].values()), rel=1e-5)


# ------------------------------------------------------------------ classifiers, CLI
def test_classifier_cache_key_follows_data_and_recipe(tmp_path):
    from mmvm.classifiers import ClassifierConfig, cache_key

    p = _digit_vectors(tmp_path)
    k = cache_key(p["train"], p["test"], "m0", ClassifierConfig())
    assert k == cache_key(p["train"], p["test"], "m0", ClassifierConfig())
    assert k != cache_key(p["train"], p["test"], "m1", ClassifierConfig())
    assert k != cache_key(p["train"], p["test"], "m0", ClassifierConfig(epochs=4))
    assert k != cache_key(p["train"], p["test"], "m0", ClassifierConfig(shift=2))
    assert k != cache_key(p["train"], p["test"], "m0", ClassifierConfig(rotate=10.0))
    assert k != cache_key(p["train"], p["test"], "m0", ClassifierConfig(members=3))


def test_corrupt_classifier_cache_is_retrained(tmp_path):
    from mmvm.classifiers import ClassifierConfig, cache_key, load_or_train

    p = _digit_vectors(tmp_path)
    recipe = ClassifierConfig(epochs=1)
    path = tmp_path / "classifiers" / f"m0-{cache_key(p['train'], p['test'], 'm0', recipe)}.pt"
    path.parent.mkdir()
    path.write_bytes(b"not a checkpoint")
    clf = load_or_train(p["train"], p["test"], ["m0"], cfg=recipe)
    assert clf.paths["m0"] == path and path.stat().st_size > 1000
    assert 0.0 <= clf.test_accuracy["m0"] <= 1.0


def test_evaluate_cli_errors_are_clear(tmp_path, capsys):
    from mmvm.cli import main

    assert main(["evaluate", "--run", str(tmp_path)]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err
    config = str(Path(__file__).resolve().parents[1] / "configs" / "polymnist.toml")
    assert main(["evaluate", "--config", config, "--set", "train.epoch=3", "--run",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "train.epoch" in err and "did you mean" in err and "epochs" in err


def test_evaluate_without_config_reads_the_data_the_run_trained_on(tmp_path, capsys):
    """A run folder alone: its own config, so its own data (a federated run's is
    elsewhere than configs/ says); another --config's data is used but noted."""
    import json
    import shutil

    from mmvm.cli import main
    from mmvm.training import train

    data = tmp_path / "trained-on"
    paths = _digit_vectors(data)
    cfg = _vector_config(data, epochs=1)
    train(cfg, MultimodalDataset.from_parquet(paths["train"], NAMES), show_progress=False)
    run = str(data / "run")
    flags = ["--device", "cpu", "--no-coherence", "--no-plot"]
    assert main(["evaluate", "--run", run, "--set", "data.max_test=50", *flags]) == 0
    used = json.loads((data / "run" / "eval.json").read_text())["settings"]
    assert used["data"]["root"] == str(data) and used["dataset"]["test_samples"] == 50
    other = tmp_path / "other"
    other.mkdir()
    for split in ("train", "test"):
        shutil.copy(paths[split], other / f"{split}.parquet")
    toml = tmp_path / "c.toml"
    toml.write_text(f'[data]\nroot = "{other}"\n[model]\nlatent_dim = 8\n' + "".join(
        f'[model.modalities.{m}]\nkind = "vector"\nshape = [64]\n' for m in NAMES))
    assert main(["evaluate", "--config", str(toml), "--run", run, *flags]) == 0
    assert f"note: evaluating on data.root={other} (from {toml}); the run trained on " \
        f"{data}" in capsys.readouterr().out


def test_evaluate_a_deployments_run_names_the_data_it_needs(tmp_path, capsys):
    """A deployment's run folder as its ServerApp writes it (no data folder: the sites
    kept their files): the error says so, where the sites' own evaluation is and how
    to give readable data, and that data evaluates it; a run that collected no model
    says why instead of asking for training."""
    import dataclasses
    import json

    from mmvm.cli import main
    from mmvm.data.sites import site_layout, split_sites
    from mmvm.federation.loop import FederationResult
    from mmvm.federation.results import write_results
    from mmvm.federation.settings import settings_for
    from mmvm.training import build_model

    paths = _digit_vectors(tmp_path / "all")
    cfg = _vector_config(tmp_path / "all")
    sites = ["site-a", "site-b", "site-c"]
    split_sites([paths["train"], paths["test"]], tmp_path / "sites", [
        dataclasses.replace(s, name=n) for s, n in zip(site_layout("vertical", NAMES),
                                                      sites, strict=True)])
    state = {k: v.numpy() for k, v in build_model(cfg).state_dict().items()}
    history = [{"window": 0, "epoch": 1, "step": 1, "rec_nll": 1.0, "reg": 0.1, "bytes": 9}]
    evaluation = {f"k{i}": {"site": n, "probe/m0": 0.5} for i, n in enumerate(sites)}
    run = tmp_path / "run-7"  # data=None: a deployment's server knows no data folder
    write_results(run, settings_for(cfg), FederationResult(
        history=history, model_state=state, evaluation=evaluation))
    flags = ["--device", "cpu", "--no-coherence", "--no-plot"]
    assert main(["evaluate", "--run", str(run), *flags]) == 2
    err = capsys.readouterr().err
    assert "records no data folder" in err and "a deployment's data stayed at the sites" in err
    assert f"already in {run / 'results.json'}" in err and "--set data.root=<folder>" in err
    assert "data.folders=" in err and "does not exist" not in err
    folders = '["site-a","site-b","site-c"]'
    assert main(["evaluate", "--run", str(run), "--set", f"data.root={tmp_path / 'sites'}",
                 "--set", f"data.folders={folders}", *flags]) == 0
    used = json.loads((run / "eval.json").read_text())["settings"]
    assert used["data"]["root"] == str(tmp_path / "sites")
    assert used["dataset"]["test_samples"] == 397
    capsys.readouterr()
    toml = tmp_path / "eval.toml"  # another config's data: the note says what the run had
    toml.write_text(f'[data]\nroot = "{tmp_path / "all"}"\n[model]\nlatent_dim = 8\n' + "".join(
        f'[model.modalities.{m}]\nkind = "vector"\nshape = [64]\n' for m in NAMES))
    assert main(["evaluate", "--run", str(run), "--config", str(toml), *flags]) == 0
    assert "the run recorded no data folder (its data stayed at the sites)" in \
        capsys.readouterr().out
    kept = tmp_path / "run-8"  # collect-model = false: every site kept its weights
    write_results(kept, settings_for(cfg, collect_model=False), FederationResult(
        history=history, evaluation=evaluation, kept_weights=sites))
    assert main(["evaluate", "--run", str(kept), *flags]) == 2
    err = capsys.readouterr().err
    assert f"{kept} is a federated run without an assembled model" in err
    assert "collect-model = false" in err and f"in {kept / 'results.json'}" in err
    assert "train first" not in err


@pytest.mark.slow
def test_evaluate_cli_writes_eval_json_and_generations(tmp_path, capsys):
    import json

    from mmvm.cli import main
    from mmvm.training import train

    paths = _digit_vectors(tmp_path)
    cfg = _vector_config(tmp_path, epochs=1)
    train(cfg, MultimodalDataset.from_parquet(paths["train"], NAMES), show_progress=False)
    toml = tmp_path / "c.toml"
    toml.write_text(
        f'[data]\nroot = "{tmp_path}"\n[model]\nlatent_dim = 8\n' + "".join(
            f'[model.modalities.{m}]\nkind = "vector"\nshape = [64]\n' for m in NAMES)
        + '[eval]\nclassifier_epochs = 2\n')
    assert main(["evaluate", "--config", str(toml), "--run", str(tmp_path / "run"),
                 "--device", "cpu"]) == 0
    res = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert res["method"] == "mmvm" and "coherence" in res
    # the settings this evaluation used (its --config), not the run's config.json
    used = res["settings"]
    assert used["eval"]["classifier_epochs"] == 2 != cfg.eval.classifier_epochs
    assert used["data"]["root"] == str(tmp_path) and used["data"]["max_test"] == 0
    assert used["dataset"]["test_samples"] == res["n_test"]
    assert (tmp_path / "run" / "generations.png").stat().st_size > 1000
    assert "probe acc" in capsys.readouterr().out
    # evaluated again without coherence: the first evaluation is kept, and it says so
    assert main(["evaluate", "--config", str(toml), "--run", str(tmp_path / "run"),
                 "--device", "cpu", "--no-coherence", "--no-plot"]) == 0
    assert "the earlier eval.json of this run is now" in capsys.readouterr().out
    (kept,) = (tmp_path / "run").glob("eval.*-*.json")
    assert json.loads(kept.read_text()) == res
    assert "coherence" not in json.loads((tmp_path / "run" / "eval.json").read_text())
    assert main(["evaluate", "--config", str(toml), "--run", str(tmp_path / "run"),
                 "--device", "cpu", "--no-coherence", "--no-plot"]) == 0
    assert len(list((tmp_path / "run").glob("eval.*-*.json"))) == 2  # each one kept
    assert json.loads(kept.read_text()) == res
