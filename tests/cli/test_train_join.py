"""mmvm train on several sites' folders: it says how the join by sample id coupled
the modalities, and a missing file under a folder of site folders names data.folders."""

from __future__ import annotations

import numpy as np

from mmvm.cli import main
from mmvm.data.coupling import coupling_counts, weak_coupling_note
from mmvm.data.prepare.arrays import prepare_arrays

CONFIG = """
[data]
root = "{root}"
folders = {folders}
[model]
latent_dim = 2
[model.modalities.a]
kind = "vector"
shape = [6]
likelihood = "mse"
[model.modalities.b]
kind = "vector"
shape = [4]
likelihood = "mse"
[train]
epochs = 1
batch_size = 32
device = "cpu"
num_threads = 1
out_dir = "{out}"
"""


def _sites(tmp_path, b_ids: bool) -> None:
    rng = np.random.default_rng(0)
    n = 80
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "ids.txt").write_text("\n".join(f"t{i}" for i in range(n)))
    for m, d in (("a", 6), ("b", 4)):
        np.save(tmp_path / f"{m}.npy", rng.normal(size=(n, d)))
    prepare_arrays(tmp_path / "sites" / "site-a", {"a": tmp_path / "a.npy"},
                   ids=tmp_path / "ids.txt")
    prepare_arrays(tmp_path / "sites" / "site-b", {"b": tmp_path / "b.npy"},
                   ids=tmp_path / "ids.txt" if b_ids else None)


def _train(tmp_path, folders: str) -> int:
    cfg = tmp_path / "lab.toml"
    cfg.write_text(CONFIG.format(root=tmp_path / "sites", folders=folders,
                                 out=tmp_path / "run"))
    return main(["train", "--config", str(cfg), "--no-progress", "--fresh"])


def test_the_join_is_reported_and_ids_that_do_not_match_are_noted(tmp_path, capsys):
    _sites(tmp_path, b_ids=True)
    assert _train(tmp_path, '["site-a", "site-b"]') == 0
    out = capsys.readouterr().out
    assert "joined 2 files by sample id: " in out and "note:" not in out
    _sites(tmp_path / "x", b_ids=False)  # site b prepared without its ids
    assert _train(tmp_path / "x", '["site-a", "site-b"]') == 0
    out = capsys.readouterr().out
    assert "have two or more modalities" in out and "note: only 0 of the" in out


def test_a_folder_of_site_folders_suggests_data_folders(tmp_path, capsys):
    _sites(tmp_path, b_ids=True)
    assert _train(tmp_path, "[]") == 2
    err = capsys.readouterr().err
    assert """--set 'data.folders=["site-a","site-b"]'""" in err


def test_coupling_counts():
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 1]], bool)
    c = coupling_counts(mask, ["x", "y", "z"])
    assert c == {"samples": 4, "per_modality": {"x": 3, "y": 2, "z": 2},
                 "multimodal": 2, "complete": 1}
    assert weak_coupling_note(c["per_modality"], 2) is None  # 2 >= 0.9 * 2
    assert "only 1 of the 2" in weak_coupling_note(c["per_modality"], 1)
