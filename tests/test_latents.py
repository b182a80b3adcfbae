"""mmvm encode: the table holds exactly the encoders' posterior parameters."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmvm.cli import main
from mmvm.config import load_config
from mmvm.data.dataset import MultimodalDataset
from mmvm.data.sites import site_layout, split_sites
from mmvm.federation.site import Site
from mmvm.training import build_model, load_trained_model
from tests.support.lab import lab_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "polymnist_cpu.toml")
SETS = ["model.latent_dim=6", "train.epochs=1", "train.batch_size=64", "train.device=cpu",
        *(f"model.modalities.m{i}.width=4" for i in range(3))]


def _flags(sets):
    return [a for s in sets for a in ("--set", s)]


def _column(path: Path, name: str) -> list:
    return pq.read_table(path).column(name).to_pylist()


def test_a_runs_latents_are_its_encoders_output(tiny_polymnist, tmp_path):
    run = tmp_path / "run"
    sets = [*SETS, f'data.root="{tiny_polymnist}"', f'train.out_dir="{run}"']
    assert main(["train", "--config", CONFIG, "--no-progress", *_flags(sets)]) == 0
    # two sites' files, each missing some samples: joined by id, nulls where absent
    spec = site_layout("vertical", ["m0", "m1", "m2"])
    files = split_sites([tiny_polymnist / "test.parquet"], tmp_path / "sites", spec,
                        missing=0.3, seed=1)
    parts = [files[s.name]["test"] for s in spec[:2]]
    out = tmp_path / "latents.parquet"
    assert main(["encode", "--run", str(run), *map(str, parts), "--out", str(out),
                 "--no-progress"]) == 0
    model, _ = load_trained_model(run)
    data = MultimodalDataset.from_parquet(parts, None, "label")
    ids = _column(out, "sample_id")
    assert ids == data.sample_ids and "mu.m2" not in pq.read_table(out).column_names
    assert _column(out, "label") == data.labels.tolist()
    for j, m in enumerate(data.names):
        mask = data.mask[:, j]
        x = data.batch(range(len(data)))["x"][m][mask]
        with torch.no_grad():
            mu, logvar = model.encode_modality(m, x)
        got_mu, got_lv = _column(out, f"mu.{m}"), _column(out, f"logvar.{m}")
        assert [v is None for v in got_mu] == (~mask).tolist()
        assert 0 < sum(v is None for v in got_mu) < len(ids)  # the 30 % missing
        np.testing.assert_allclose(np.array([v for v in got_mu if v is not None]),
                                   mu.numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.array([v for v in got_lv if v is not None]),
                                   logvar.numpy(), rtol=1e-6, atol=1e-6)
    # the plot reads the present rows back, nulls left out
    from mmvm.latents import read_latents

    mus, labels = read_latents([out])
    for j, m in enumerate(data.names):
        mask = data.mask[:, j].numpy()
        np.testing.assert_allclose(mus[m], np.array([v for v in _column(out, f"mu.{m}")
                                                     if v is not None]))
        np.testing.assert_array_equal(labels[m], data.labels.numpy()[mask])
    assert main(["plot", "latents", str(out), "--out", str(tmp_path / "l.png")]) == 0


@torch.no_grad()
def test_unknown_labels_are_null_and_read_back_as_unknown(tmp_path, capsys):
    """A sample without a label (-1 in the data) gets a null label, not a class -1 a
    downstream classifier would learn; the plot's reader maps it back to -1."""
    from mmvm.latents import latent_table, read_latents, write_latents

    cfg = load_config(CONFIG, SETS)
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    x = {m: rng.random((5, 3, 28, 28), dtype=np.float32) for m in model.names}
    labels = np.array([3, -1, 0, -1, 9])
    data = MultimodalDataset([f"s{i}" for i in range(5)], x, {m: 1.0 for m in x},
                             np.ones((5, 3), bool), labels)
    table = latent_table(model, data, batch_size=2)
    assert table.column("label").to_pylist() == [3, None, 0, None, 9]
    out = write_latents(tmp_path / "l.parquet", table, {})
    _, back = read_latents([out])
    np.testing.assert_array_equal(back["m0"], labels)
    # data without labels: unknown (grey) by default, never class 0's colour (a site
    # without the label read as all 'effusion'); an error when a column is asked for
    bare = write_latents(tmp_path / "bare.parquet", table.drop_columns(["label"]), {})
    assert read_latents([bare])[1]["m0"].tolist() == [-1] * 5
    with pytest.raises(ValueError, match="no label column 'label'; its label columns: none"):
        read_latents([bare], "label")
    # only label.<name> columns (MIMIC-CXR's findings): the plot says which to use
    from mmvm.cli import main

    other = table.drop_columns(["label"]).append_column(
        "label.edema", table.column("label"))
    findings = write_latents(tmp_path / "findings.parquet", other, {})
    assert main(["plot", "latents", str(findings), "--out", str(tmp_path / "f.png")]) == 0
    assert "note: coloured by label.edema, the files' only label column" in \
        capsys.readouterr().out  # (a lab's label.odor: what else would it colour by)
    two = other.append_column("label.effusion", table.column("label"))
    findings = write_latents(tmp_path / "two.parquet", two, {})
    assert main(["plot", "latents", str(findings), "--out", str(tmp_path / "f.png")]) == 0
    assert "note: no 'label' column: the points are drawn in one colour; colour them by " \
           "one of label.edema, label.effusion with --label COLUMN" in \
        capsys.readouterr().out


@torch.no_grad()
def test_a_sites_own_encoder_after_a_federated_run(tiny_polymnist, tmp_path, capsys):
    cfg = load_config(CONFIG, SETS)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data,
                                                            root=str(tiny_polymnist)))
    spec = site_layout("vertical", ["m0", "m1", "m2"])
    files = split_sites([tiny_polymnist / "train.parquet"], tmp_path / "sites", spec)
    train = files[spec[1].name]["train"]
    site = Site(cfg, "b", train)
    state = tmp_path / "state" / "b.pt"
    state.parent.mkdir()
    site.save(state)  # what <state>/run-<id>/<site>.pt holds
    out = tmp_path / "b.parquet"
    args = ["encode", "--site-state", str(state), "--config", CONFIG, *_flags(SETS),
            str(train), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    said = capsys.readouterr()
    assert "encoded per modality: m1 " in said.out
    assert "has trained no window yet: these are the latents of its initial" in said.err
    site.windows_done = 1  # as after its first window
    site.save(state)
    assert main([*args[:-3], "--out", str(tmp_path / "b1.parquet"), "--no-progress"]) == 0
    assert "trained no window" not in capsys.readouterr().err
    data = MultimodalDataset.from_parquet(train, None, "label")
    mu, _ = site.model.encode_modality("m1", data.batch(range(len(data)))["x"]["m1"])
    np.testing.assert_allclose(np.array(_column(out, "mu.m1")), mu.numpy(), atol=1e-6)
    # read as the config says: streamed row groups give the same table
    streamed = tmp_path / "streamed.parquet"
    assert main([*args[:-3], "--set", "data.streaming=true", "--set",
                 "data.cache_row_groups=1", "--out", str(streamed), "--no-progress"]) == 0
    assert pq.read_table(streamed).equals(pq.read_table(out))
    # the run's --set overrides are part of the model's shapes
    wrong = ["model.latent_dim=5" if s.startswith("model.latent_dim") else s for s in SETS]
    assert main([*args[:5], *_flags(wrong), *args[5 + 2 * len(SETS):]]) == 2
    err = capsys.readouterr().err
    assert "not a site state of this config's model (encoders.m1." in err
    assert "in the state, [5, " in err and "in the config's model" in err
    # a config whose modalities the state does not hold: both lists named
    hippo = ["encode", "--site-state", str(state), "--config", "configs/hippocampus.toml",
             str(train), "--out", str(tmp_path / "x.parquet")]
    assert main(hippo) == 2
    assert "the state holds modalities ['m1'], the config configs/hippocampus.toml has " \
           "['rat1'" in capsys.readouterr().err
    assert main(["encode", "--site-state", str(state), str(train), "--out",
                 str(tmp_path / "x.parquet")]) == 2
    assert "needs --config" in capsys.readouterr().err
    # a file that is not a site's state: said so, no traceback, nothing unpickled
    for wrong, said in ((train, "not a readable state file"),
                        (tmp_path, "no such site state file")):
        args_wrong = ["encode", "--site-state", str(wrong), "--config", CONFIG,
                      str(train), "--out", str(tmp_path / "x.parquet")]
        assert main(args_wrong) == 2
        assert said in capsys.readouterr().err
    torch.save({"model": {}, "config": {}}, tmp_path / "checkpoint.pt")
    assert main(["encode", "--site-state", str(tmp_path / "checkpoint.pt"), "--config",
                 CONFIG, str(train), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "use --run" in capsys.readouterr().err
    # an encode output given as the data: said to be one
    again = ["encode", "--site-state", str(state), "--config", CONFIG, *_flags(SETS),
             str(out), "--out", str(tmp_path / "x.parquet"), "--no-progress"]
    assert main(again) == 2
    assert "an `mmvm encode` output (posterior means and variances per sample), not a " \
           "site's data file" in capsys.readouterr().err
    assert main([*args[:-3], "--out", str(train)]) == 2  # would replace its input
    assert "is one of the input files" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_encode_refuses_data_without_the_models_modalities(tiny_polymnist, tmp_path,
                                                           capsys):
    state = tmp_path / "s.pt"
    cfg = load_config(CONFIG, SETS)
    spec = site_layout("vertical", ["m0", "m1", "m2"])
    files = split_sites([tiny_polymnist / "train.parquet"], tmp_path / "sites", spec)
    Site(cfg, "a", files[spec[0].name]["train"]).save(state)
    code = main(["encode", "--site-state", str(state), "--config", CONFIG, *_flags(SETS),
                 str(files[spec[2].name]["train"]), "--out", str(tmp_path / "o.parquet")])
    assert code == 2 and "holds none of the model's modalities" in capsys.readouterr().err


def test_latent_panels_share_one_basis(tmp_path, capsys):
    """Above two dimensions every panel is projected on the same two principal axes
    of all panels together: equal latents land on equal points, and the projection
    keeps the two largest variances of the stacked latents."""
    from mmvm.latents import common_2d

    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 5)) * [5, 3, 1, 0.5, 0.1]
    got, pca = common_2d({"a": a, "same": a.copy(), "b": a[:50] + 1.0})
    assert pca
    np.testing.assert_allclose(got["a"], got["same"])
    stacked = np.concatenate([a, a, a[:50] + 1.0])
    top2 = np.sort(np.linalg.eigvalsh(np.cov(stacked.T, bias=True)))[-2:].sum()
    proj = np.concatenate(list(got.values()))
    assert np.isclose(proj.var(0).sum(), top2)
    flat, pca = common_2d({"x": a[:, :2]})
    assert not pca
    np.testing.assert_array_equal(flat["x"], a[:, :2])  # two dimensions: as they are


def test_plot_latents_of_two_sites(tiny_polymnist, tmp_path, capsys):
    cfg = load_config(CONFIG, SETS)
    spec = site_layout("vertical", ["m0", "m1", "m2"])
    files = split_sites([tiny_polymnist / "train.parquet"], tmp_path / "sites", spec)
    outs = []
    for s in spec[:2]:
        state, out = tmp_path / f"{s.name}.pt", tmp_path / f"{s.name}.parquet"
        Site(cfg, s.name, files[s.name]["train"]).save(state)
        assert main(["encode", "--site-state", str(state), "--config", CONFIG,
                     *_flags(SETS), str(files[s.name]["train"]), "--out", str(out),
                     "--no-progress"]) == 0
        outs.append(str(out))
    png = tmp_path / "sites.png"
    assert main(["plot", "latents", *outs, "--out", str(png)]) == 0
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", "latents", str(tmp_path / "none.parquet")]) == 2
    assert "mmvm encode" in capsys.readouterr().err


def _lab_run(tmp_path) -> tuple[Path, list[str], np.ndarray]:
    """A run on two sites' folders; site-eeg's files hold label and label.sex (made by
    mmvm data prepare arrays --label sex=...), site-img's none. Returns the run, the
    test files and sex per sample t<i>."""
    from mmvm.data.prepare.arrays import prepare_arrays

    rng, n = np.random.default_rng(0), 60
    (tmp_path / "ids.txt").write_text("\n".join(f"t{i}" for i in range(n)))
    sex = rng.integers(0, 2, n)
    for name, values in (("y", rng.integers(0, 3, n)),
                         ("sex", np.array(["female", "male"])[sex]),
                         ("eeg", rng.normal(size=(n, 6))), ("img", rng.normal(size=(n, 4)))):
        np.save(tmp_path / f"{name}.npy", values)
    sites = tmp_path / "sites"
    prepare_arrays(sites / "site-eeg", {"eeg": tmp_path / "eeg.npy"},
                   ids=tmp_path / "ids.txt",
                   labels={"label": tmp_path / "y.npy", "label.sex": tmp_path / "sex.npy"})
    prepare_arrays(sites / "site-img", {"img": tmp_path / "img.npy"},
                   ids=tmp_path / "ids.txt")
    (tmp_path / "lab.toml").write_text(lab_config(
        sites, tmp_path / "run", '["site-eeg", "site-img"]', {"eeg": 6, "img": 4},
        latent_dim=3))
    assert main(["train", "--config", str(tmp_path / "lab.toml"), "--no-progress"]) == 0
    return tmp_path / "run", [str(sites / s / "test.parquet")
                              for s in ("site-eeg", "site-img")], sex


def test_encode_carries_every_label_column_and_plot_colours_by_any(tmp_path, capsys,
                                                                  monkeypatch):
    """label.<name> columns reach the latents file (joined by id: img-only rows too),
    plot latents colours by one, and a column the file lacks is named with those it
    has; --out must be Parquet; the device defaults to auto, as train.device."""
    from mmvm.cli import build_parser

    run, files, sex = _lab_run(tmp_path)
    out = tmp_path / "lat.parquet"
    assert main(["encode", "--run", str(run), *files, "--out", str(out),
                 "--no-progress"]) == 0
    table = pq.read_table(out)
    assert {"label", "label.sex"} <= set(table.column_names)
    ids = table.column("sample_id").to_pylist()
    assert table.column("label.sex").to_pylist() == [int(sex[int(s[1:])]) for s in ids]
    png = tmp_path / "sex.png"
    import mmvm.plot_latents

    drawn, original = [], mmvm.plot_latents.latent_2d
    monkeypatch.setattr(mmvm.plot_latents, "latent_2d", lambda *a, **k: drawn.append(
        k["label_names"]) or original(*a, **k))
    assert main(["plot", "latents", str(out), "--label", "label.sex", "--out",
                 str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    # the site files' class names, which encode carries: a legend of 0 / 1 otherwise
    assert drawn == [["female", "male"]]
    from mmvm.latents import read_latents

    _, by_sex = read_latents([out], "label.sex")
    assert set(np.unique(by_sex["img"])) <= {0, 1} and len(by_sex["img"]) == len(ids)
    capsys.readouterr()
    assert main(["plot", "latents", str(out), "--label", "nosuch", "--out",
                 str(tmp_path / "no.png")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no label column 'nosuch'; its label columns: label, label.sex" in err
    assert not (tmp_path / "no.png").exists()
    # a CSV name is refused before anything runs, not silently written as Parquet
    assert main(["encode", "--run", str(run), *files, "--out", str(tmp_path / "x.csv"),
                 "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "mmvm encode writes Parquet" in err  # read by pyarrow, which mmvm installs
    assert "pyarrow.parquet.read_table" in err and "pandas" not in err
    assert not (tmp_path / "x.csv").exists()
    args = build_parser().parse_args(["encode", "--run", str(run), files[0], "--out", "o.pq"])
    assert args.device == "auto"


def test_encode_help_names_a_parquet_reader_mmvm_installs(capsys):
    """pandas is no dependency of mmvm: the help names pyarrow, which is."""
    with pytest.raises(SystemExit) as done:
        main(["encode", "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "pyarrow.parquet.read_table" in out and "pandas" not in out


@torch.no_grad()
def test_nan_or_empty_latents_are_named_not_drawn(tmp_path, capsys):
    """A NaN mean (a diverged model's) is named with its file, column and row, not an
    "SVD did not converge"; a file without any posterior is an error, not a blank PNG."""
    from mmvm.latents import latent_table, write_latents

    cfg = load_config(CONFIG, SETS)
    model = build_model(cfg)
    x = {m: np.random.default_rng(0).random((4, 3, 28, 28), dtype=np.float32)
         for m in model.names}
    data = MultimodalDataset([f"s{i}" for i in range(4)], x, {m: 1.0 for m in x},
                             np.ones((4, 3), bool), np.arange(4))
    table = latent_table(model, data, batch_size=2)
    mu = np.array(table.column("mu.m1").to_pylist())
    mu[2, 0] = np.nan
    col = pa.array(list(mu), type=table.schema.field("mu.m1").type)
    nan = write_latents(tmp_path / "nan.parquet",
                        table.set_column(table.column_names.index("mu.m1"), "mu.m1", col), {})
    png = tmp_path / "l.png"
    assert main(["plot", "latents", str(nan), "--out", str(png)]) == 2
    assert "nan.parquet: mu.m1 is NaN or infinite in 1 rows (the first is row 2)" in \
        capsys.readouterr().err
    empty = write_latents(tmp_path / "empty.parquet", table.slice(0, 0), {})
    assert main(["plot", "latents", str(empty), "--out", str(png)]) == 2
    assert "no sample has a posterior mean" in capsys.readouterr().err
    assert not png.exists()


def test_encode_refuses_images_of_another_size_before_reading_rows(tiny_polymnist,
                                                                    tmp_path, capsys):
    """A 32x32 file for a 28x28 model: named from the file's metadata, with the
    config key, not at the first batch."""
    from mmvm.data.store_write import write_site_table

    state = tmp_path / "s.pt"
    cfg = load_config(CONFIG, SETS)
    spec = site_layout("vertical", ["m0", "m1", "m2"])
    files = split_sites([tiny_polymnist / "train.parquet"], tmp_path / "sites", spec)
    Site(cfg, "a", files[spec[0].name]["train"]).save(state)
    big = write_site_table(tmp_path / "big.parquet", ["a", "b"],
                           {"m0": np.zeros((2, 3, 32, 32), np.float32)}, None, {})
    out = tmp_path / "o.parquet"
    code = main(["encode", "--site-state", str(state), "--config", CONFIG, *_flags(SETS),
                 str(big), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"{big}: m0 is [3, 32, 32] there, [3, 28, 28] in" in err
    assert "(model.modalities.m0.shape)" in err and not out.exists()
