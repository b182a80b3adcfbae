"""Lab values in clinical units (sodium ~140, platelets ~250,000): a table that
prepared clean and then failed at step 0 with "lower train.lr". Warned of where it
is prepared and where it is trained; ``--standardize`` z-scores each column by the
training split's mean and std, checked here against their closed form."""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.cli import main
from mmvm.config import config_from_dict
from mmvm.data.prepare.tables import prepare_tables
from mmvm.data.store import DataError, read_site_meta, read_site_table
from mmvm.data.value_ranges import range_warnings

N = 60


def _labs(path, bad: str | None = None):
    rng = np.random.default_rng(5)
    sodium = rng.normal(140, 3, N)
    wbc = rng.normal(8000, 1500, N)
    platelets = rng.normal(250_000, 40_000, N)
    lines = ["visit,outcome,sodium,wbc,platelets"]
    for i in range(N):
        cells = [f"{sodium[i]:.2f}", f"{wbc[i]:.1f}", f"{platelets[i]:.0f}"]
        if bad is not None and i == 7:
            cells[0] = bad
        lines.append(f"v{i:03d},{'sepsis' if i % 3 else 'none'}," + ",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return np.stack([np.array([float(c) for c in line.split(",")[2:]])
                     for line in lines[1:]]) if bad is None else None


def _prepare(tmp_path, out, *extra):
    return main(["data", "prepare", "table", "--modality", f"labs={tmp_path / 'labs.csv'}",
                 "--id-column", "visit", "--label", "outcome", "--out", str(out),
                 "--quiet", *extra])


def test_values_far_from_zero_are_warned_of_when_prepared_and_when_trained(
        tmp_path, capsys):
    _labs(tmp_path / "labs.csv")
    assert _prepare(tmp_path, tmp_path / "raw") == 0
    out = capsys.readouterr().out
    assert "warning: labs holds values" in out and "far from 0" in out
    assert "prepare it with --standardize" in out
    spec = config_from_dict({"model": {"modalities": {"labs": {
        "kind": "vector", "shape": [3], "likelihood": "mse"}}}}).model.modalities
    said = range_warnings(spec, tmp_path / "raw" / "train.parquet")
    assert len(said) == 1 and "NaN at step 0, whatever the learning rate" in said[0]
    counts = config_from_dict({"model": {"modalities": {"labs": {
        "kind": "vector", "shape": [3], "likelihood": "poisson"}}}}).model.modalities
    assert range_warnings(counts, tmp_path / "raw" / "train.parquet") == []


def test_standardize_z_scores_each_column_by_the_training_rows_only(tmp_path, capsys):
    x = _labs(tmp_path / "labs.csv")
    assert _prepare(tmp_path, tmp_path / "z", "--standardize") == 0
    out = capsys.readouterr().out
    assert "far from 0" not in out and "standardized labs: each column z-scored" in out
    train, test = (read_site_table(tmp_path / "z" / f"{s}.parquet") for s in ("train", "test"))
    rows = {f"v{i:03d}": i for i in range(N)}
    xtr = x[[rows[i] for i in train.sample_ids]]
    mean, std = xtr.mean(0), xtr.std(0)  # the training split's, population std
    np.testing.assert_allclose(train.tensors["labs"], (xtr - mean) / std, rtol=1e-5,
                               atol=1e-5)
    xte = x[[rows[i] for i in test.sample_ids]]  # the test split: the train's scale
    np.testing.assert_allclose(test.tensors["labs"], (xte - mean) / std, rtol=1e-5,
                               atol=1e-5)
    kept = read_site_meta(tmp_path / "z" / "train.parquet")["dataset"]["standardized"]
    np.testing.assert_allclose(kept["labs"]["mean"], mean, rtol=1e-6)  # of float32
    np.testing.assert_allclose(kept["labs"]["std"], std, rtol=1e-6)
    back = test.tensors["labs"] * np.array(kept["labs"]["std"]) + kept["labs"]["mean"]
    np.testing.assert_allclose(back, xte, rtol=1e-5)  # x = z * std + mean


def test_standardize_names_a_modality_it_lacks_and_refuses_images(tmp_path):
    from mmvm.data.prepare.standardize import standardized

    _labs(tmp_path / "labs.csv")
    with pytest.raises(DataError, match=r"--standardize vitals: no such modality "
                                        r"\(modalities: labs\)"):
        prepare_tables(tmp_path / "o", {"labs": tmp_path / "labs.csv"}, id_column="visit",
                       labels={"label": "outcome"}, standardize=["vitals"])
    with pytest.raises(DataError, match="--standardize img: images keep pixels in 0..1"):
        standardized({"img": np.zeros((4, 1, 8, 8), np.uint8)}, ["img"], np.arange(2),
                     images=["img"])
    flat, stats = standardized({"v": np.array([[1.0, 5.0], [3.0, 5.0]])}, ["v"],
                               np.arange(2))
    assert stats["v"]["std"] == [1.0, 1.0]  # a constant column: its std kept at 1
    np.testing.assert_array_equal(flat["v"], [[-1.0, 0.0], [1.0, 0.0]])


def test_one_cell_that_is_not_a_number_is_named_not_its_whole_column(tmp_path):
    _labs(tmp_path / "labs.csv", bad="<0.5")
    with pytest.raises(DataError, match=r"labs.csv: row 8 \(sample 'v007'\), column "
                                        r"'sodium': '<0.5' is not a number \(1 such cell "
                                        r"in the column\); write a number there"):
        prepare_tables(tmp_path / "o", {"labs": tmp_path / "labs.csv"}, id_column="visit",
                       labels={"label": "outcome"})


def test_a_value_beyond_float32_is_named_with_its_row_and_column(tmp_path, recwarn):
    _labs(tmp_path / "labs.csv", bad="1e40")
    with pytest.raises(DataError, match=r"labs.csv: row 8 \(sample 'v007'\), column "
                                        r"'sodium': 1e\+40 \(1 values missing, not finite "
                                        r"or beyond float32's range in all\)"):
        prepare_tables(tmp_path / "o", {"labs": tmp_path / "labs.csv"}, id_column="visit",
                       labels={"label": "outcome"})
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_a_csv_separated_by_semicolons_is_told_why_it_does_not_parse(tmp_path):
    (tmp_path / "eu.csv").write_text("visit;outcome;sodium\nv1;none;140,2\nv2;sepsis;"
                                     "138,9\n")
    with pytest.raises(DataError, match=r"eu.csv: not a readable table .*its header is "
                                        r"separated by ';'"):
        prepare_tables(tmp_path / "o", {"labs": tmp_path / "eu.csv"}, id_column="visit")
    (tmp_path / "eu2.csv").write_text("visit;outcome;count\nv1;none;3\nv2;sepsis;4\n")
    with pytest.raises(DataError, match=r"eu2.csv: no column 'visit' \(its columns: "
                                        r"visit;outcome;count\); its header is separated"):
        prepare_tables(tmp_path / "o", {"labs": tmp_path / "eu2.csv"}, id_column="visit")
