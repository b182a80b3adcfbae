"""``mmvm data check`` on real files, as a user runs it: values the model would see
wrongly (uint8 pixels stored with scale 1, values outside a likelihood's range) are
named as warnings, values that overflow once scaled as errors naming the sample id;
nothing is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmvm.data.store import read_site_table, write_site_table

ROOT = Path(__file__).resolve().parents[2]
POLYMNIST = str(ROOT / "configs" / "polymnist.toml")


def _check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmvm.cli", "data", "check", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})


@pytest.fixture(scope="module")
def unscaled(tiny_polymnist, tmp_path_factory) -> Path:
    """The tiny PolyMNIST train file with m0 written with scale 1 (0..255)."""
    t = read_site_table(tiny_polymnist / "train.parquet")
    return write_site_table(tmp_path_factory.mktemp("u") / "train.parquet", t.sample_ids,
                            t.tensors, t.labels, {}, scales={"m0": 1.0})


def test_uint8_stored_with_scale_one_is_a_warning_with_the_values(unscaled, tmp_path):
    res = _check(str(unscaled), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "m0 3x28x28 uint8 0..255" in res.stdout and "m1 3x28x28 uint8 0..1" in res.stdout
    assert res.stderr.strip().splitlines() == [
        f"warning: {unscaled}: modality 'm0' is uint8 stored with scale 1: the model sees "
        f"values 0..255; images and bernoulli targets are expected in 0..1 (scale 255, "
        f"the default for uint8); counts are fine as they are (check against a config's "
        f"likelihoods: --config)"]
    assert list(tmp_path.iterdir()) == []


def test_with_a_config_the_likelihoods_range_is_checked(unscaled, tiny_polymnist,
                                                        tmp_path):
    res = _check(str(unscaled), str(tiny_polymnist / "test.parquet"), "--config",
                 POLYMNIST, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"warning: {unscaled}: modality 'm0' holds values 0..255 (stored value / the "
        f"file's scale), outside 0..1: kind 'image' takes pixels scaled to 0..1 (image "
        f"decoders end in a sigmoid); the file stores uint8 with scale 1: write it with "
        f"scale 255 (the default for uint8), as mmvm data prepare does"]


def test_with_a_config_a_label_column_no_file_has_is_named(tiny_polymnist, tmp_path):
    """configs/mimic_cxr_64.toml's label.no_finding against a hospital's own
    label.finding: data check said ok, and the evaluation refused it after training."""
    res = _check(str(tiny_polymnist / "test.parquet"), "--config", POLYMNIST, "--set",
                 "data.label=label.digit", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"warning: {POLYMNIST}: data.label 'label.digit' is in none of these files "
        f"(their label columns: label); the probes and coherence read it: --set "
        f"data.label=label"]


def test_with_a_config_a_shape_that_does_not_fit_is_an_error(tiny_polymnist, tmp_path):
    res = _check(str(tiny_polymnist / "test.parquet"), "--config", POLYMNIST, "--set",
                 "model.modalities.m1.shape=[1, 28, 28]", cwd=tmp_path)
    assert res.returncode == 1
    assert (f"error: {tiny_polymnist / 'test.parquet'}: m1 is [3, 28, 28] there, "
            f"[1, 28, 28] in {POLYMNIST} (model.modalities.m1.shape)") in res.stderr
    res = _check(str(tiny_polymnist / "test.parquet"), "--config",
                 str(ROOT / "configs" / "hippocampus.toml"), cwd=tmp_path)
    assert res.returncode == 1 and "holds none of the modalities of" in res.stderr
    res = _check(str(tiny_polymnist / "test.parquet"), "--set", "train.amp='fp16'",
                 cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == (
        "mmvm data check: error: --set changes a --config; give the config too")


def test_a_value_that_overflows_once_scaled_is_an_error_naming_the_sample(tmp_path):
    """3e37 with scale 1e-6: finite on disk, inf as the model's input. It passed the
    check; training then stopped on NaN/inf at batch positions, naming no sample."""
    values = np.zeros(4 * 3, np.float32)
    values[2 * 3 + 1] = 3e37
    table = pa.table({"sample_id": pa.array([f"s{i}" for i in range(4)]),
                      "x": pa.FixedSizeListArray.from_arrays(pa.array(values), 3)})
    table = table.replace_schema_metadata(
        {b"mmvm.tensor.x": b'{"shape": [3], "dtype": "float32", "scale": 1e-6}'})
    path = tmp_path / "big.parquet"
    pq.write_table(table, path)
    res = _check(str(path), cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (
        f"error: {path}: column 'x', row 2 (id 's2'): value 3e+37 divided by the "
        f"column's scale 1e-06 overflows float32 (the model's input is value / scale, at "
        f"most 3.403e+38): write the column with a larger scale")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.parquet"]


def _site(folder: Path, modality: str, train: list[str], test: list[str],
          names: list[str] | None = None, flip: str | None = None) -> Path:
    """A site's two files, every sample of class 0 but ``flip`` (class 1)."""
    rng = np.random.default_rng(0)
    meta = {"label_names": {"label": names}} if names else {}
    for split, ids in (("train", train), ("test", test)):
        write_site_table(folder / f"{split}.parquet", ids,
                         {modality: rng.random((len(ids), 4)).astype(np.float32)},
                         {"label": np.array([int(i == flip) for i in ids], np.int64)},
                         meta)
    return folder / "train.parquet"


def test_the_sites_files_together_say_how_they_join_and_what_does_not(tmp_path, capsys):
    """A walkthrough's third lab prepared without --ids: each file checked ok, and the
    run then trained its rat as an independent VAE, said only at alignment."""
    from mmvm.cli import main

    ids = [f"trial{i:03d}" for i in range(60)]
    a = _site(tmp_path / "a", "rat1", ids[:50], ids[50:])
    b = _site(tmp_path / "b", "rat2", ids[:50], ids[50:])
    c = _site(tmp_path / "c", "rat3", [str(i) for i in range(50)], ["x"])
    assert main(["data", "check", str(a), str(b), str(c)]) == 0  # a warning, not invalid
    said = capsys.readouterr()
    assert ("train.parquet: the 3 files joined by sample id: 100 samples (rat1 50, "
            "rat2 50, rat3 50); 50 have two or more modalities, 0 all") in said.out
    assert "rat3 shares no sample with another modality" in said.err
    # another split: b's test holds a of a's train samples
    d = _site(tmp_path / "d", "rat2", ids[:49], ids[49:])
    assert main(["data", "check", str(a), str(d)]) == 1  # training refuses it: an error
    err = capsys.readouterr().err
    assert "1 of the 11 test samples of" in err and "'trial049'" in err
    assert "(mmvm train and mmvm run refuse these folders)" in err
    assert main(["data", "check", str(a), str(b)]) == 0  # alike: nothing to say
    assert "warning" not in capsys.readouterr().err


def test_sites_that_number_their_classes_apart_are_an_error(tmp_path, capsys):
    """A hospital walkthrough: 'Normal' at one site, 'normal' at the other; both files
    were ok, the run trained and its joined evaluation failed at the end."""
    from mmvm.cli import main

    ids = [f"s{i:02d}" for i in range(30)]
    a = _site(tmp_path / "a", "frontal", ids[:25], ids[25:], ["effusion", "normal"])
    b = _site(tmp_path / "b", "lateral", ids[:25], ids[25:], ["Normal", "effusion"])
    assert main(["data", "check", str(a), str(b)]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "number the classes of 'label' differently" in err
    c = _site(tmp_path / "c", "lateral", ids[:25], ids[25:], ["effusion", "normal"])
    assert main(["data", "check", str(a), str(c)]) == 0  # the same list: fine


def test_a_sample_the_sites_label_differently_is_an_error_by_name(tmp_path, capsys):
    """A neuroscientist relabelled one window at one lab: data check said ok, and
    training blamed the class numbering, by id, which both labs shared."""
    from mmvm.cli import main

    ids = [f"s{i:02d}" for i in range(30)]
    a = _site(tmp_path / "a", "rat1", ids[:25], ids[25:], ["anise", "lemon"])
    b = _site(tmp_path / "b", "rat2", ids[:25], ids[25:], ["anise", "lemon"],
              flip=ids[3])
    assert main(["data", "check", str(a), str(b)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert ("sample id 's03' has 'label' 'lemon' here and 'anise' in another site "
            "file (1 samples disagree): the sites label these samples differently; "
            "correct the label at one site, or leave it unknown there") in err
    # two sites of one modality (a horizontal split) are checked alike (a review)
    c = _site(tmp_path / "c", "rat1", ids[:25], ids[25:], ["anise", "lemon"], flip=ids[3])
    assert main(["data", "check", str(a), str(c)]) == 1
    assert "the sites label these samples differently" in capsys.readouterr().err


def test_sites_that_name_one_label_two_ways_are_warned_of(tmp_path, capsys):
    """A walkthrough's image site wrote label.finding and its lab-values site label
    (prepare images --label finding, prepare table --label finding): every check was
    ok, and the federated run gave the image site no probe and no judge."""
    from mmvm.cli import main

    ids = [f"s{i:02d}" for i in range(30)]
    a = _site(tmp_path / "xray", "frontal", ids[:25], ids[25:], ["effusion", "normal"])
    rng = np.random.default_rng(1)
    for split, part in (("train", ids[:25]), ("test", ids[25:])):
        write_site_table(tmp_path / "labs" / f"{split}.parquet", part,
                         {"labs": rng.random((len(part), 4)).astype(np.float32)},
                         {"label.finding": np.zeros(len(part), np.int64)},
                         {"label_names": {"label.finding": ["effusion", "normal"]}})
    assert main(["data", "check", str(a), str(tmp_path / "labs" / "train.parquet")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert ("the sites' label columns differ (xray: label, labs: label.finding) (the same "
            "class names: one label named two ways?): a federated run probes and judges "
            "data.label at each site, and a site without it gets neither") in err
    c = _site(tmp_path / "c", "lateral", ids[:25], ids[25:], ["effusion", "normal"])
    assert main(["data", "check", str(a), str(c)]) == 0
    assert "label columns differ" not in capsys.readouterr().err
    # site folders, as data config and site-dirs take them: their two files each
    assert main(["data", "check", str(tmp_path / "xray"), str(tmp_path / "labs")]) == 0
    said = capsys.readouterr()
    assert said.out.count("ok") >= 4 and "label columns differ" in said.err
