"""``mmvm data config``: a whole config for prepared site folders, which `mmvm train`
then trains as written (the modalities from the files, the rest from the shipped
config made for such data, a small table's batch and judges adjusted)."""

from __future__ import annotations

import tomllib

import numpy as np

from mmvm.cli import main
from mmvm.config import load_config
from mmvm.data.prepare.arrays import prepare_arrays


def _site(tmp_path, name, array, labels=None, n=None):
    n = n or len(array)
    (tmp_path / "ids.txt").write_text("\n".join(f"s{i}" for i in range(n)))
    np.save(tmp_path / f"{name}.npy", array)
    extra = {}
    if labels is not None:
        np.save(tmp_path / f"{name}-y.npy", labels)
        extra["labels"] = {"label.finding": tmp_path / f"{name}-y.npy"}
    prepare_arrays(tmp_path / "sites" / f"site-{name}", {name: tmp_path / f"{name}.npy"},
                   ids=tmp_path / "ids.txt", **extra)
    return tmp_path / "sites" / f"site-{name}"


def test_mixed_images_and_lab_values_get_a_config_that_trains(tmp_path, capsys):
    """A researcher had no template for mixed data; a hospital pasted 64 px sections
    into polymnist_cpu.toml and its first regulariser was 3.4 million."""
    rng = np.random.default_rng(0)
    n = 120
    names = np.array(["effusion", "nodule", "normal"])[rng.integers(0, 3, n)]
    xray = _site(tmp_path, "frontal", rng.integers(0, 255, (n, 1, 64, 64), np.uint8),
                 names)
    labs = _site(tmp_path, "labs", rng.normal(size=(n, 7)).astype(np.float32))
    out = tmp_path / "configs" / "lab.toml"
    out.parent.mkdir()
    assert main(["data", "config", str(xray), str(labs), "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert "configs/mimic_cxr_64.toml" in said.out and "num-sites=2 site-dirs=" in said.out
    # the lab site holds no label: its probe and judge in a federated run, said
    assert ("warning: no label column is held by every folder (site-frontal: "
            "label.finding; site-labs: none)") in said.err
    raw = tomllib.loads(out.read_text())
    mods = raw["model"]["modalities"]
    assert mods["frontal"] == {"kind": "image", "shape": [1, 64, 64],
                               "network": "res_image", "likelihood": "laplace",
                               "scale": 0.75, "width": 4}  # mimic_cxr_64's, not 32
    assert mods["labs"] == {"kind": "vector", "shape": [7], "network": "mlp",
                            "width": 0, "layers": 2, "likelihood": "mse"}
    assert raw["data"]["folders"] == ["site-frontal", "site-labs"]
    assert raw["data"]["label"] == "label.finding"
    assert raw["train"]["out_dir"] == "runs/lab"
    # 96 train rows: the base's batch 16 leaves 6 steps an epoch, judges 105 epochs
    assert raw["train"]["batch_size"] == 8 and raw["eval"]["classifier_epochs"] == 50
    assert "shape = [1, 64, 64]" in out.read_text()  # arrays on one line
    cfg = load_config(out, [f"train.out_dir={tmp_path / 'run'}", "train.epochs=1"])
    assert main(["train", "--config", str(out), "--set", f"train.out_dir={tmp_path / 'run'}",
                 "--set", "train.epochs=1", "--no-progress"]) == 0
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and cfg.model.latent_dim == 32
    assert main(["data", "config", str(xray), "--out", str(out)]) == 2  # kept
    assert "exists; --force writes over it" in capsys.readouterr().err


def test_spike_counts_get_the_vector_config_and_a_poisson_likelihood(tmp_path, capsys):
    rng = np.random.default_rng(1)
    rat = _site(tmp_path, "rat1", rng.poisson(2.0, (400, 12, 10)).astype(np.int16),
                np.array(["anise", "lemon"])[rng.integers(0, 2, 400)])
    out = tmp_path / "rats.toml"
    assert main(["data", "config", str(rat), "--out", str(out)]) == 0
    raw = tomllib.loads(out.read_text())
    said = capsys.readouterr().out
    assert "configs/hippocampus.toml" in said
    # the base's 2-D latent came along without a word
    assert "note: [model] latent_dim = 2 from hippocampus.toml; tune them" in said, said
    assert "# [model] latent_dim = 2 from hippocampus.toml" in out.read_text()
    assert "config='configs/rats.toml'" in said  # the form a deployment takes
    assert raw["model"]["modalities"]["rat1"]["likelihood"] == "poisson"  # counts
    assert raw["model"]["latent_dim"] == 2 and raw["train"]["grad_clip"] == 5.0
    assert raw["train"]["batch_size"] == 32  # 320 rows / 8 steps, a power of two


def test_the_bases_own_label_columns_are_not_carried_over(tmp_path, capsys):
    """configs/mimic_cxr.toml probes 14 findings by name: a hospital's own files, with
    label.finding, trained and then failed to evaluate."""
    rng = np.random.default_rng(2)
    site = _site(tmp_path, "frontal", rng.integers(0, 255, (40, 1, 224, 224), np.uint8),
                 np.array(["a", "b"])[rng.integers(0, 2, 40)])
    out = tmp_path / "x.toml"
    assert main(["data", "config", str(site), "--out", str(out)]) == 0
    evals = tomllib.loads(out.read_text())["eval"]
    assert "labels" not in evals and "metric" not in evals  # accuracy on label.finding
    assert evals["probe_train"] == 20000
    # a base's pattern that the files match is kept (celeba.toml: "label.*")
    assert main(["data", "config", str(site), "--out", str(out), "--force", "--base",
                 "configs/celeba.toml"]) == 0
    assert tomllib.loads(out.read_text())["eval"]["labels"] == ["label.*"]
    # files without labels: not the base's label.no_finding, which would be refused
    (tmp_path / "bare").mkdir()
    bare = _site(tmp_path / "bare", "frontal",
                 rng.integers(0, 255, (40, 1, 64, 64), np.uint8))
    assert main(["data", "config", str(bare), "--out", str(out), "--force"]) == 0
    assert "label" not in tomllib.loads(out.read_text())["data"]
    assert "the files hold no label column" in capsys.readouterr().out


def test_what_no_network_takes_and_folders_that_disagree_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(3)
    big = _site(tmp_path, "scan", rng.integers(0, 255, (10, 1, 128, 128), np.uint8))
    assert main(["data", "config", str(big), "--out", str(tmp_path / "a.toml")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "modality 'scan' [1, 128, 128]: no image network takes it" in err
    assert not (tmp_path / "a.toml").exists()
    (tmp_path / "other").mkdir()
    np.save(tmp_path / "other" / "a.npy", rng.normal(size=(10, 3)).astype(np.float32))
    np.save(tmp_path / "other" / "b.npy", rng.normal(size=(10, 4)).astype(np.float32))
    for k in "ab":
        prepare_arrays(tmp_path / "other" / f"site-{k}", {"v": tmp_path / "other" / f"{k}.npy"})
    assert main(["data", "config", str(tmp_path / "other" / "site-a"),
                 str(tmp_path / "other" / "site-b"), "--out", str(tmp_path / "b.toml")]) == 2
    assert "modality 'v' is [3] at one folder and [4]" in capsys.readouterr().err
    assert main(["data", "config", str(tmp_path), "--out", str(tmp_path / "c.toml")]) == 2
    assert "no train.parquet" in capsys.readouterr().err


def test_out_must_be_toml(tmp_path, capsys):
    assert main(["data", "config", str(tmp_path), "--out", str(tmp_path / "lab.yaml")]) == 2
    assert "a config is a .toml file" in capsys.readouterr().err
