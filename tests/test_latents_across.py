"""Decoding across modalities (mmvm plot across): a probe fitted on one set of
latents scored on another's tells a shared space from a mirrored one, and no cell
scores a sample, or a trial, that its probe was fitted on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mmvm.cli import main
from mmvm.latents_across import across_matrix


def _classes(rng, n=120):
    y = rng.integers(0, 2, n)
    x = np.stack([np.where(y == 1, 2.0, -2.0) + rng.normal(0, 0.5, n),
                  rng.normal(0, 1, n)], 1)
    return x, y


def test_a_shared_space_decodes_across_and_a_mirrored_one_below_chance():
    """A lab whose track runs the other way: its latents are the others' mirrored,
    its own probe as good, and a decoder fitted on the others reads it wrong."""
    rng = np.random.default_rng(0)
    x, y = _classes(rng)
    shared = x + rng.normal(0, 0.1, x.shape)
    ids = np.array([f"s{i}" for i in range(len(y))])
    res = across_matrix({"rat1": x, "rat2": shared, "mirrored": -x},
                        {"rat1": y, "rat2": y, "mirrored": y},
                        {"rat1": ids, "rat2": ids, "mirrored": ids})
    m = np.array(res["matrix"])
    assert res["names"] == ["rat1", "rat2", "mirrored"]
    assert m[0, 1] > 0.95 and m[1, 0] > 0.95  # one space
    assert m[0, 2] < 0.05 and m[2, 0] < 0.05  # every sample read as the other class
    assert np.diag(m).min() > 0.95  # each set decodes itself: the probe cannot tell
    assert res["chance"]["rat1"] == pytest.approx(np.bincount(y).max() / len(y))
    assert res["n"] == {"rat1": 120, "rat2": 120, "mirrored": 120}


def test_no_cell_scores_a_sample_or_trial_its_probe_was_fitted_on():
    """Labels unrelated to the latents, 80 trials in 60 dimensions (a probe fits any
    labels there). Two rats hold the same trials: fitted on all of rat 1 and scored on
    rat 2, the probe read 0.92-0.98 (a review); by window, not trial, the diagonal did.
    Folds of whole trials, shared by every set, find nothing, as there is nothing."""
    rng = np.random.default_rng(1)
    trials, per, dim = 80, 4, 60
    centre = rng.normal(0, 1, (trials, dim))
    y = np.repeat(rng.integers(0, 2, trials), per)  # unrelated to the trial's latents
    rat1 = np.repeat(centre, per, 0) + rng.normal(0, 0.02, (trials * per, dim))
    rat2 = np.repeat(centre, per, 0) + rng.normal(0, 0.3, (trials * per, dim))
    ids = np.array([f"T{t}-w{w}" for t in range(trials) for w in range(per)])
    trial = np.repeat(np.arange(trials).astype(str), per)
    mus, ys = {"rat1": rat1, "rat2": rat2}, {"rat1": y, "rat2": y}
    by_trial = np.array(across_matrix(mus, ys, {"rat1": trial, "rat2": trial})["matrix"])
    assert (by_trial < 0.65).all(), by_trial
    by_window = np.array(across_matrix(mus, ys, {"rat1": ids, "rat2": ids})["matrix"])
    assert by_window.min() > 0.75  # a trial's other windows: what it memorised
    one_class = across_matrix(mus, {"rat1": np.zeros_like(y), "rat2": y},
                              {"rat1": trial, "rat2": trial})
    assert all(math.isnan(v) for v in one_class["matrix"][0])  # nothing to fit
    with pytest.raises(ValueError, match="folds = 1: cross-validation needs 2 or more"):
        across_matrix(mus, ys, {"rat1": trial, "rat2": trial}, folds=1)


def test_plot_across_from_encode_outputs_of_files_with_trials(tmp_path, capsys):
    from mmvm.data.prepare.arrays import prepare_arrays
    from tests.support.lab import lab_config

    rng = np.random.default_rng(2)
    trials, per = 30, 4
    odor = rng.integers(0, 2, trials)
    ids = [f"T{t:02d}-w{w}" for t in range(trials) for w in range(per)]
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    (tmp_path / "trial.txt").write_text("\n".join(i[:3] for i in ids))
    np.save(tmp_path / "y.npy", np.array(["anise", "lemon"])[np.repeat(odor, per)])
    for rat, d in (("rat1", 6), ("rat2", 5)):
        x = rng.normal(0, 1, (len(ids), d)) + 2 * np.repeat(odor, per)[:, None]
        np.save(tmp_path / f"{rat}.npy", x.astype(np.float32))
        prepare_arrays(tmp_path / "sites" / f"site-{rat}", {rat: tmp_path / f"{rat}.npy"},
                       ids=tmp_path / "ids.txt", groups=tmp_path / "trial.txt",
                       labels={"label.odor": tmp_path / "y.npy"}, test_fraction=0.5)
    (tmp_path / "lab.toml").write_text(lab_config(
        tmp_path / "sites", tmp_path / "run", '["site-rat1", "site-rat2"]',
        {"rat1": 6, "rat2": 5}, latent_dim=2))
    assert main(["train", "--config", str(tmp_path / "lab.toml"), "--no-progress"]) == 0
    files = [str(tmp_path / "sites" / f"site-{r}" / "test.parquet") for r in ("rat1", "rat2")]
    lat = tmp_path / "lat.parquet"
    assert main(["encode", "--run", str(tmp_path / "run"), *files, "--out", str(lat),
                 "--no-progress"]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(lat)
    ids = table.column("sample_id").to_pylist()
    # each window's trial, for the folds, written as its first window's id: which
    # windows share a trial, not the trial's own name (a patient's record number)
    assert table.column("group").to_pylist() == [min(j for j in ids if j[:3] == i[:3])
                                                 for i in ids]
    capsys.readouterr()
    assert main(["plot", "across", str(lat), "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "probe of label.odor fitted on each row's latents" in out
    assert "1. rat1" in out and "2. rat2" in out
    res = json.loads((tmp_path / "lat_across.json").read_text())
    assert res["names"] == ["rat1", "rat2"] and res["class_names"] == ["anise", "lemon"]
    assert (tmp_path / "lat_across.png").read_bytes()[:4] == b"\x89PNG"
    # another label's default picture is another file: the first is not written over
    before = (tmp_path / "lat_across.json").read_bytes()
    assert main(["plot", "across", str(lat), "--label", "label.odor", "--folds", "3"]) == 0
    assert "lat_across_label.odor.png" in capsys.readouterr().out
    assert json.loads((tmp_path / "lat_across_label.odor.json").read_text())["label"] == \
        "label.odor"
    assert (tmp_path / "lat_across.json").read_bytes() == before
    assert main(["plot", "across", str(lat), "--label", "label.odor", "--out",
                 str(tmp_path / "x.png")]) == 0
    assert main(["plot", "across", str(lat), "--out", str(tmp_path / "x.png")]) == 0  # again
    (tmp_path / "results.json").write_text('{"mine": 1}')  # a user's own JSON beside
    assert main(["plot", "across", str(lat), "--out", str(tmp_path / "results.png")]) == 2
    assert "was not written by mmvm plot across" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == '{"mine": 1}'
    assert main(["plot", "across", str(lat), "--folds", "1"]) == 2
    # a file without the label (an unlabelled site's): left out, said; its rows read
    # "every sample class 0", a red cell that looked like a mirrored pairing
    from mmvm.latents import write_latents

    bare = write_latents(tmp_path / "bare.parquet", table.drop_columns(["label.odor"]), {})
    capsys.readouterr()
    assert main(["plot", "across", str(lat), str(bare), "--out",
                 str(tmp_path / "two.png")]) == 0
    assert f"note: {bare}: no label.odor column: left out" in capsys.readouterr().err
    assert json.loads((tmp_path / "two.json").read_text())["names"] == ["rat1", "rat2"]
