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
    (said,) = range_warnings(counts, tmp_path / "raw" / "train.parquet")
    assert "far from 0" not in said  # counts may be large; lab values are no counts:
    assert "not whole numbers" in said


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
    from mmvm.data.prepare.standardize import apply, scales

    _labs(tmp_path / "labs.csv")
    with pytest.raises(DataError, match=r"--standardize vitals: no such modality "
                                        r"\(modalities: labs\)"):
        prepare_tables(tmp_path / "o", {"labs": tmp_path / "labs.csv"}, id_column="visit",
                       labels={"label": "outcome"}, standardize=["vitals"])
    with pytest.raises(DataError, match="--standardize img: images keep pixels in 0..1"):
        scales({"img": np.zeros((4, 1, 8, 8), np.uint8)}, ["img"], np.arange(2),
               images=["img"])
    v = np.array([[1.0, 5.0], [3.0, 5.0]])
    got = scales({"v": v}, ["v"], np.arange(2))
    assert got["v"]["std"] == [1.0, 1.0]  # a constant column: its std kept at 1
    np.testing.assert_array_equal(apply(v, got["v"]), [[-1.0, 0.0], [1.0, 0.0]])


@pytest.mark.parametrize("bad, said", [
    # one cell that is not a number: named, not its whole column condemned
    ("<0.5", r"'<0\.5' is not a number \(1 such cell in the column\); write a number"),
    # beyond float32: named with its column, without numpy's RuntimeWarning
    ("1e40", r"1e\+40 \(1 value missing, not finite or beyond float32's range in all\)"),
])
def test_a_bad_cell_is_named_with_its_row_sample_and_column(tmp_path, recwarn, bad, said):
    _labs(tmp_path / "labs.csv", bad=bad)
    with pytest.raises(DataError, match=r"labs.csv: row 8 \(line 9, sample 'v007'\), column "
                                        r"'sodium': " + said):
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


def test_a_tsv_with_decimal_commas_is_told_its_decimal_mark(tmp_path):
    """A spreadsheet saved as .tsv in a locale that writes 140,2: the tabs split it
    right and every lab cell is text. Said so, with the cell and what it should read;
    a whole number among them (138) does not hide it."""
    (tmp_path / "eu.tsv").write_text("visit\toutcome\tsodium\n"
                                     "v1\tnone\t138\nv2\tsepsis\t140,2\n")
    said = (r"eu.tsv: row 2 \(line 3, sample 'v2'\), column 'sodium': '140,2' is not a number: "
            r"a comma as the decimal mark \(140\.2\)\? Save the table with '\.' as the")
    with pytest.raises(DataError, match=said):
        prepare_tables(tmp_path / "o", {"labs": tmp_path / "eu.tsv"}, id_column="visit",
                       labels={"label": "outcome"})


@pytest.mark.parametrize("cells, said", [
    (["1,250", "980"], r"'1,250' is not a number: a comma as the decimal mark \(1\.250\) "
                       r"or commas between thousands \(1250\)\?"),
    (["1,250,000", "2"], r"'1,250,000' is not a number: commas between thousands "
                         r"\(1250000\)\?"),
    (["1.250,5", "3"], r"'1.250,5' is not a number: a comma as the decimal mark "
                       r"\(1250\.5\)\?"),
    # a column of text whose first odd cell happens to read as a number: text
    (["ward 3", "3,4", "icu", "ward 1"], r"columns \['sodium'\] are not numbers"),
])
def test_numbers_written_with_commas_are_read_both_ways_and_text_stays_text(
        tmp_path, cells, said):
    rows = [f"v{i}\tnone\t{c}" for i, c in enumerate(cells)]
    (tmp_path / "t.tsv").write_text("visit\toutcome\tsodium\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=said):
        prepare_tables(tmp_path / "o", {"labs": tmp_path / "t.tsv"}, id_column="visit",
                       labels={"label": "outcome"})


def test_arrays_are_z_scored_per_feature_from_a_memory_mapped_file(tmp_path):
    """[N, 2, 3] float64 readings, read in blocks (never whole): each of the 6
    features by its own training mean and std; a constant feature of 140.2 (whose
    float64 std is rounding noise, ~1e-14) keeps std 1 instead of blowing its test
    value up to 1e13; counts stay counts under a bare --standardize."""
    from mmvm.data.prepare.arrays import prepare_arrays

    rng = np.random.default_rng(1)
    x = rng.normal(250.0, 20.0, (50, 2, 3))
    x[:, 1, 2] = 140.2
    x[7, 1, 2] = 141.0  # one row off the constant: wherever it falls, not 1e13
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "n.npy", rng.poisson(3.0, (50, 4)).astype(np.int64))
    (tmp_path / "ids.txt").write_text("\n".join(f"s{i}" for i in range(50)) + "\n")
    paths = prepare_arrays(tmp_path / "out", {"x": tmp_path / "x.npy",
                                              "n": tmp_path / "n.npy"},
                           ids=tmp_path / "ids.txt", standardize=True)
    meta = read_site_meta(paths["train"])["dataset"]
    assert list(meta["standardized"]) == ["x"] and meta["counts"] == ["n"]
    train = read_site_table(paths["train"])
    rows = [int(i[1:]) for i in train.sample_ids]
    flat = x.reshape(50, 6)[rows]
    mean, std = flat.mean(0), flat.std(0)
    std[5] = 1.0 if np.ptp(flat[:, 5]) == 0 else std[5]
    np.testing.assert_allclose(meta["standardized"]["x"]["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(meta["standardized"]["x"]["std"], std, rtol=1e-9)
    for part in (train, read_site_table(paths["test"])):
        rows = [int(i[1:]) for i in part.sample_ids]
        want = ((x.reshape(50, 6)[rows] - mean) / std).reshape(-1, 2, 3)
        np.testing.assert_allclose(part.tensors["x"], want, rtol=1e-5, atol=1e-5)
        assert np.abs(part.tensors["x"]).max() < 10  # the constant: 0 or 0.8
        np.testing.assert_array_equal(part.tensors["n"],
                                      np.load(tmp_path / "n.npy")[rows])


def test_a_second_site_takes_the_first_sites_scale(tmp_path, capsys):
    """Sites holding the same modality: one scale for all (--standardize-from)."""
    x = _labs(tmp_path / "labs.csv")
    assert _prepare(tmp_path, tmp_path / "a", "--standardize") == 0
    first = read_site_meta(tmp_path / "a" / "train.parquet")["dataset"]["standardized"]
    lines = (tmp_path / "labs.csv").read_text().splitlines()
    (tmp_path / "labs.csv").write_text("\n".join(lines[:1] + lines[1:][::-1]) + "\n")
    assert _prepare(tmp_path, tmp_path / "b", "--standardize", "--standardize-from",
                    str(tmp_path / "a" / "train.parquet"), "--seed", "3") == 0
    b = read_site_table(tmp_path / "b" / "train.parquet")
    rows = [int(i[1:]) for i in b.sample_ids]
    mean, std = (np.array(first["labs"][k]) for k in ("mean", "std"))
    np.testing.assert_allclose(b.tensors["labs"], (x[rows] - mean) / std, rtol=1e-5,
                               atol=1e-5)
    assert read_site_meta(tmp_path / "b" / "train.parquet")["dataset"][
        "standardized"] == first
    capsys.readouterr()
    assert _prepare(tmp_path, tmp_path / "c", "--standardize-from",
                    str(tmp_path / "a" / "train.parquet")) == 2
    assert "--standardize-from needs --standardize" in capsys.readouterr().err
    from mmvm.data.prepare.standardize import scales
    with pytest.raises(DataError, match=r"its scale of labs does not fit: 3 means and 3 "
                                        r"standard deviations .* for this labs's 5"):
        scales({"labs": np.zeros((4, 5))}, ["labs"], np.arange(3), given=first)
