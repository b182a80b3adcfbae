"""``mmvm data prepare table``: a lab's own CSV / Parquet tables (an id column, a label
column, numbers in the rest) into site files, read back exactly; missing values and
columns that are not numbers named with their row, sample id and column."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmvm.cli import main
from mmvm.data.prepare.tables import prepare_tables
from mmvm.data.store import DataError, read_site_table

ODORS = ["lemon", "mint", "rose", "vanilla"]


def _rat_csv(path, n=40, nan_at=None, text_column=False):
    rng = np.random.default_rng(3)
    counts = rng.poisson(2.0, size=(n, 6)).astype(np.int16)
    ids = [f"T{1000 + 7 * i}" for i in range(n)]
    odor = [ODORS[i % 4] for i in range(n)]
    lines = ["trial_id,stimulus," + ",".join(f"n{j}" for j in range(6))
             + (",session" if text_column else "")]
    for i in range(n):
        row = [str(v) for v in counts[i]]
        if nan_at == i:
            row[2] = ""
        lines.append(f"{ids[i]},{odor[i]}," + ",".join(row)
                     + (",day1" if text_column else ""))
    path.write_text("\n".join(lines) + "\n")
    return ids, counts, odor


def test_a_csv_per_rat_becomes_site_files_with_its_ids_labels_and_counts(tmp_path):
    ids, counts, odor = _rat_csv(tmp_path / "rat3.csv")
    out = tmp_path / "rat3"
    assert main(["data", "prepare", "table", "--modality", f"rat3={tmp_path / 'rat3.csv'}",
                 "--id-column", "trial_id", "--label", "stimulus", "--out", str(out),
                 "--quiet"]) == 0
    parts = [read_site_table(out / f"{s}.parquet") for s in ("train", "test")]
    got = {i: (x, y) for t in parts for i, x, y in
           zip(t.sample_ids, t.tensors["rat3"], t.labels["label"], strict=True)}
    assert sorted(got) == sorted(ids)
    for i, c, o in zip(ids, counts, odor, strict=True):
        assert np.array_equal(got[i][0], c.astype(np.float32))
        assert got[i][1] == ODORS.index(o)  # names numbered in sorted order
    assert parts[0].dataset_meta["label_names"] == {"label": ODORS}


def test_missing_values_and_text_columns_are_named_where_they_are(tmp_path):
    _rat_csv(tmp_path / "rat4.csv", nan_at=5)
    with pytest.raises(DataError, match=r"rat4.csv: row 6 \(line 7, sample 'T1035'\), column "
                                        r"'n2': nan \(1 value missing"):
        prepare_tables(tmp_path / "out", {"rat4": tmp_path / "rat4.csv"},
                       id_column="trial_id", labels={"label": "stimulus"})
    _rat_csv(tmp_path / "rat1.csv", text_column=True)
    with pytest.raises(DataError, match=r"columns \['session'\] are not numbers; name "
                                        r"them with --label, --group-column or --drop"):
        prepare_tables(tmp_path / "out", {"rat1": tmp_path / "rat1.csv"},
                       id_column="trial_id", labels={"label": "stimulus"})
    paths = prepare_tables(tmp_path / "out", {"rat1": tmp_path / "rat1.csv"},
                           id_column="trial_id", labels={"label": "stimulus"},
                           drop=["session"])
    assert read_site_table(paths["train"]).tensors["rat1"].shape[1] == 6
    with pytest.raises(DataError, match="no column 'trial'"):
        prepare_tables(tmp_path / "o2", {"rat1": tmp_path / "rat1.csv"}, id_column="trial")


def test_a_misspelt_label_or_group_column_is_said_as_a_typo(tmp_path):
    """A neuroscientist's --label odor=stimuls read 'columns ['stimulus'] are not
    numbers'."""
    _rat_csv(tmp_path / "rat2.csv", text_column=True)
    with pytest.raises(DataError, match=r"no column 'stimuls' \(--label\); did you mean "
                                        r"'stimulus'\? \(its columns: trial_id, stimulus"):
        prepare_tables(tmp_path / "out", {"rat2": tmp_path / "rat2.csv"},
                       id_column="trial_id", labels={"label": "stimuls"}, drop=["session"])
    with pytest.raises(DataError, match=r"no column 'sesion' \(--group-column\); did you "
                                        r"mean 'session'\?"):
        prepare_tables(tmp_path / "out", {"rat2": tmp_path / "rat2.csv"},
                       id_column="trial_id", labels={"label": "stimulus"},
                       group_column="sesion")


def test_a_time_or_trial_column_left_in_is_named(tmp_path):
    """A neuroscientist forgot --drop t_start_s: the modality grew a 'neuron' and the
    only warning, 'values 0..1188, far from 0', named no column."""
    rng = np.random.default_rng(0)
    lines = ["window,trial_no,stimulus,t_start_s," + ",".join(f"u{j}" for j in range(5))]
    lines += [f"T{i // 4:03d}_w{i % 4},{i // 4},{ODORS[i // 4 % 4]},{6 * i},"
              + ",".join(map(str, rng.poisson(2, 5))) for i in range(120)]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    paths = prepare_tables(tmp_path / "out", {"r1": tmp_path / "r.csv"},
                           id_column="window", labels={"label.odor": "stimulus"},
                           group_column="trial_no")
    dataset = read_site_table(paths["train"]).dataset_meta
    assert dataset["split_by"] == "group (30 groups from column 'trial_no')"
    # each feature's column name, in order, beside its scale (a walkthrough could not
    # map a standardized value back to its lab test)
    assert dataset["features"] == {"r1": ["t_start_s"] + [f"u{j}" for j in range(5)]}
    assert dataset["notes"] == [
        f"r1: column 't_start_s' of {tmp_path / 'r.csv'} never falls from row to row "
        f"(0..714): a trial number, an index or a time, read as a feature? --drop it if "
        f"it is not a measurement",
        "r1: the columns farthest from 0: t_start_s (0..714)"]
    clean = prepare_tables(tmp_path / "ok", {"r1": tmp_path / "r.csv"},
                           id_column="window", labels={"label.odor": "stimulus"},
                           group_column="trial_no", drop=["t_start_s"])
    assert "notes" not in read_site_table(clean["train"]).dataset_meta  # counts: no note


def test_a_parquet_table_with_a_gap_in_integer_labels_keeps_it_unknown(tmp_path):
    n = 30
    table = pa.table({"id": [f"s{i}" for i in range(n)],
                      "odor": [None if i == 4 else i % 4 for i in range(n)],
                      "x0": np.arange(n, dtype=np.float64), "x1": np.ones(n)})
    pq.write_table(table, tmp_path / "lab.parquet")
    paths = prepare_tables(tmp_path / "out", {"v": tmp_path / "lab.parquet"},
                           id_column="id", labels={"label": "odor"})
    parts = [read_site_table(p) for p in paths.values()]
    label = {i: y for t in parts for i, y in zip(t.sample_ids, t.labels["label"],
                                                 strict=True)}
    assert label["s4"] == -1 and label["s5"] == 1 and label["s8"] == 0


def test_integer_columns_are_offered_the_poisson_likelihood(tmp_path, capsys):
    _rat_csv(tmp_path / "rat2.csv")
    assert main(["data", "prepare", "table", "--modality", f"rat2={tmp_path / 'rat2.csv'}",
                 "--id-column", "trial_id", "--label", "stimulus", "--out",
                 str(tmp_path / "rat2"), "--quiet"]) == 0
    assert 'likelihood = "poisson" models them as such' in capsys.readouterr().out


def test_two_tables_in_another_order_are_aligned_by_id_and_share_one_label(tmp_path):
    """A clinic's lab values and a second export of vitals list the same visits in
    another order, the label only in the first: rows follow the ids, not the lines."""
    ids, counts, odor = _rat_csv(tmp_path / "a.csv", n=24)
    rng = np.random.default_rng(5)
    vitals = rng.normal(size=(24, 3)).round(3)
    order = rng.permutation(24)
    (tmp_path / "b.csv").write_text("trial_id,v0,v1,v2\n" + "".join(
        f"{ids[k]}," + ",".join(map(str, vitals[k])) + "\n" for k in order))
    paths = prepare_tables(tmp_path / "out", {"a": tmp_path / "a.csv",
                                              "b": tmp_path / "b.csv"},
                           id_column="trial_id", labels={"label": "stimulus"})
    parts = [read_site_table(paths[s]) for s in ("train", "test")]
    got = {i: (a, b, y) for t in parts for i, a, b, y in
           zip(t.sample_ids, t.tensors["a"], t.tensors["b"], t.labels["label"],
               strict=True)}
    for k, i in enumerate(ids):
        assert np.array_equal(got[i][0], counts[k].astype(np.float32))
        assert np.allclose(got[i][1], vitals[k].astype(np.float32))
        assert got[i][2] == ODORS.index(odor[k])


def test_tables_that_disagree_are_refused_with_the_sample_named(tmp_path):
    ids, _, odor = _rat_csv(tmp_path / "a.csv", n=12)
    both = {"a": tmp_path / "a.csv", "b": tmp_path / "b.csv"}
    lines = [f"{i},{o},{k}" for k, (i, o) in enumerate(zip(ids, odor, strict=True))]
    (tmp_path / "b.csv").write_text("trial_id,stimulus,x\n" + "\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"do not hold the same samples: 0 ids only in "
                                        r".*b.csv, 1 only in .*a.csv \(e.g. 'T1077'\)"):
        prepare_tables(tmp_path / "o1", both, id_column="trial_id",
                       labels={"label": "stimulus"})
    lines[3] = f"{ids[3]},rose_typo,3"
    (tmp_path / "b.csv").write_text("trial_id,stimulus,x\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"column 'stimulus': sample 'T1021' is 'vanilla' "
                                        r"in .*a.csv and 'rose_typo' in .*b.csv"):
        prepare_tables(tmp_path / "o2", both, id_column="trial_id",
                       labels={"label": "stimulus"})
    lines[3] = lines[2]
    (tmp_path / "b.csv").write_text("trial_id,stimulus,x\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"b.csv: sample id 'T1014' is on more than one "
                                        r"row"):
        prepare_tables(tmp_path / "o3", both, id_column="trial_id",
                       labels={"label": "stimulus"})
    with pytest.raises(DataError, match=r"no table has a column 'odor'"):
        prepare_tables(tmp_path / "o4", {"a": tmp_path / "a.csv"}, id_column="trial_id",
                       labels={"label": "odor"}, drop=["stimulus"])
    assert not any((tmp_path / f"o{k}").exists() for k in range(1, 5))


def test_ids_are_kept_as_written_and_a_row_without_id_or_group_is_refused(tmp_path):
    """A CSV reader guessing types made ids 007 and 7 one number, and an empty id the
    sample 'None'; an empty label in the last row was lost with the text file's end.
    Labels are still read as numbers: 1.0 (pandas' ints with a gap) is class 1, NA
    unknown."""
    (tmp_path / "a.csv").write_text(
        "id,x,label,trial\n007,1,1.0,t1\n7,2,0.0,t2\n0007,3,,t3\n00007,4,NA,t4\n")
    paths = prepare_tables(tmp_path / "o1", {"a": tmp_path / "a.csv"}, id_column="id",
                           labels={"label": "label"}, group_column="trial")
    parts = [read_site_table(paths[s]) for s in ("train", "test")]
    got = {i: y for t in parts for i, y in zip(t.sample_ids, t.labels["label"],
                                               strict=True)}
    assert got == {"007": 1, "7": 0, "0007": -1, "00007": -1}
    (tmp_path / "b.csv").write_text("id,x\n007,1\n,2\n")
    with pytest.raises(DataError, match=r"b.csv: row 2 \(line 3\) has no sample id \(column 'id'\)"):
        prepare_tables(tmp_path / "o2", {"b": tmp_path / "b.csv"}, id_column="id")
    (tmp_path / "c.csv").write_text("id,x,trial\ns1,1,t1\ns2,2,\n")
    with pytest.raises(DataError, match=r"sample 's2' has no group \(column 'trial'"):
        prepare_tables(tmp_path / "o3", {"c": tmp_path / "c.csv"}, id_column="id",
                       group_column="trial")


def test_a_label_column_with_no_class_and_a_lopsided_group_split_are_said(tmp_path,
                                                                          capsys):
    """One rat's export has the odor column empty (it lives in another rat's file),
    and two sessions as groups put half the trials in the test split: both were
    written without a word."""
    rows = "".join(f"s{i},{i},,g{i % 2}\n" for i in range(40))
    (tmp_path / "w.csv").write_text("id,a,odor,session\n" + rows)
    for seed in range(20):  # a seed that puts one of the two sessions in test
        code = main(["data", "prepare", "table", "--modality", f"w={tmp_path / 'w.csv'}",
                     "--id-column", "id", "--label", "odor", "--group-column", "session",
                     "--seed", str(seed), "--out", str(tmp_path / f"o{seed}"), "--quiet"])
        if code == 0:
            break
    out = capsys.readouterr().out
    assert "warning: label: every one of the 40 samples is unknown" in out
    assert "note: the test split holds 50% of the samples (--test-fraction 0.2)" in out
