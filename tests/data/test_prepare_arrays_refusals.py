"""prepare_arrays refuses bad input by file (and row or line), says what to do, and
writes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.data.prepare.arrays import prepare_arrays
from mmvm.data.store import DataError, read_site_meta, read_site_table
from tests.data.conftest import N


def test_bad_arrays_are_refused_by_file_and_nothing_is_written(arrays):
    d = arrays["dir"]
    np.save(d / "short.npy", np.zeros((N - 1, 3)))
    np.save(d / "floats.npy", np.zeros(N))
    nan = arrays["eeg"].copy()
    nan[5, 0, 0] = np.nan
    np.save(d / "nan.npy", nan)
    (d / "dup.txt").write_text("\n".join(["same"] * N))
    cases = [({"eeg": d / "eeg.npy", "s": d / "short.npy"}, {}, "short.npy"),
             ({"eeg": d / "eeg.npy"}, {"ids": d / "dup.txt"}, "same"),
             ({"eeg": d / "nan.npy"}, {}, "NaN"),
             ({"eeg": d / "eeg.npy"}, {"labels": {"label": d / "floats.npy"}},
              r"integers .*got float64 \(\d+,\); whole numbers: save a\.astype\(np\.int64\)"),
             ({"eeg": d / "ids.txt"}, {}, ".npy")]
    for mods, kwargs, said in cases:
        with pytest.raises(DataError, match=said):
            prepare_arrays(d / "out", mods, **kwargs)
        assert not (d / "out").exists()


@pytest.mark.parametrize("labels, hint", [
    (np.eye(3, dtype=np.float32)[np.arange(N) % 3], "one-hot rows? save a.argmax(axis=1)"),
    (np.linspace(0, 1, N), "decode the value itself from `mmvm encode`'s latents")])
def test_labels_in_another_form_say_how_to_make_class_ids(arrays, labels, hint):
    d = arrays["dir"]
    np.save(d / "odd.npy", labels)
    with pytest.raises(DataError) as info:
        prepare_arrays(d / "out", {"eeg": d / "eeg.npy"}, labels={"label": d / "odd.npy"})
    assert str(info.value).endswith(hint) if hint else \
        str(info.value).endswith(f"got float64 ({N},)")


def test_a_lab_table_given_where_one_value_per_line_is_read_is_refused(arrays):
    """Walkthrough: a lab passed its trials.csv (header trial,odor) as --ids: '120
    rows, where the other inputs have 121', and without the header each whole line
    became an id and 120 odors a label of 120 classes, silently."""
    d = arrays["dir"]
    rows = [f"{i},odor{k % 4}" for k, i in enumerate(arrays["ids"])]
    (d / "trials.csv").write_text("trial,odor\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"trials.csv: a table, where one value per "
                                        r"line is read; prepare your tables with `mmvm "
                                        r"data prepare table`"):  # (its header)
        prepare_arrays(d / "o", {"eeg": d / "eeg.npy"}, ids=d / "trials.csv")
    (d / "trials.txt").write_text("\n".join(rows) + "\n")  # no header, a .txt
    with pytest.raises(DataError, match=r"line 1 \('subject-000,odor0'\) holds several "
                                        r"values"):
        prepare_arrays(d / "o", {"eeg": d / "eeg.npy"}, ids=d / "trials.txt")
    # a class name may hold a comma; a label of a class per sample is noted
    # a one-column .csv (np.savetxt's) is a list, as before
    np.savetxt(d / "groups.csv", np.arange(N) // 4, fmt="%d")
    got = prepare_arrays(d / "g", {"eeg": d / "eeg.npy"}, ids=d / "ids.txt",
                         groups=d / "groups.csv")
    assert read_site_meta(got["train"])["dataset"]["split_by"].startswith("group (30 ")
    (d / "names.txt").write_text("\n".join(["effusion, left"] * 60 + ["normal"] * 60))
    assert prepare_arrays(d / "n", {"eeg": d / "eeg.npy"},
                          labels={"label": d / "names.txt"})
    (d / "odd.txt").write_text("\n".join(arrays["ids"]))
    prepare_arrays(d / "u", {"eeg": d / "eeg.npy"}, labels={"label": d / "odd.txt"})
    (note,) = read_site_meta(d / "u" / "train.parquet")["dataset"]["notes"]
    assert note.startswith("label: each of its 120 labelled samples is a class of its own")


def test_what_cannot_be_stored_says_what_to_do(arrays):
    d = arrays["dir"]
    np.save(d / "scalar.npy", np.float32(1.0))
    np.save(d / "flags.npy", np.zeros((N, 3), bool))
    np.save(d / "objects.npy", np.array(arrays["ids"], dtype=object), allow_pickle=True)
    for name in ("label", "group"):  # group: the column of each sample's trial
        with pytest.raises(ValueError, match="not 'sample_id', 'group' or 'label"):
            prepare_arrays(d / "out", {name: d / "eeg.npy"})
    with pytest.raises(ValueError, match="letters, digits"):
        prepare_arrays(d / "out", {"my eeg": d / "eeg.npy"})
    with pytest.raises(DataError, match=r"scalar.npy: .* expected \[N samples"):
        prepare_arrays(d / "out", {"s": d / "scalar.npy"})
    with pytest.raises(DataError, match="bernoulli"):
        prepare_arrays(d / "out", {"f": d / "flags.npy"})
    with pytest.raises(DataError, match=r"astype\(str\)"):
        prepare_arrays(d / "out", {"eeg": d / "eeg.npy"}, ids=d / "objects.npy")
    assert not (d / "out").exists()


def test_a_row_count_that_differs_is_blamed_on_its_own_file(arrays):
    """The walkthrough's case: eeg 195 rows, img and ids 200: eeg's file is named, with
    every input's count; with one modality and the ids, the ids decide."""
    d = arrays["dir"]
    np.save(d / "eeg_short.npy", arrays["eeg"][:N - 5])
    np.save(d / "img_rows.npy", arrays["img"])
    with pytest.raises(DataError) as e:
        prepare_arrays(d / "out", {"eeg": d / "eeg_short.npy", "img": d / "img_rows.npy"},
                       ids=d / "ids.txt")
    msg = str(e.value)
    assert msg.startswith(f"{d / 'eeg_short.npy'}: modality 'eeg' has {N - 5} rows, "
                          f"where the other inputs have {N}"), msg
    assert f"img_rows.npy (modality 'img') {N}" in msg and f"ids.txt (sample ids) {N}" in msg
    assert "img_rows.npy: " not in msg
    with pytest.raises(DataError, match=rf"eeg_short.npy: modality 'eeg' has {N - 5} rows, "
                                        rf"where the sample ids \(.*ids.txt\) are {N}"):
        prepare_arrays(d / "out", {"eeg": d / "eeg_short.npy"}, ids=d / "ids.txt")
    np.save(d / "label_long.npy", np.zeros(N + 1, np.int64))
    with pytest.raises(DataError, match=rf"^\S*label_long.npy: label 'label' has {N + 1}"):
        prepare_arrays(d / "out", {"eeg": d / "eeg.npy"}, ids=d / "ids.txt",
                       labels={"label": d / "label_long.npy"})
    assert not (d / "out").exists()


@pytest.mark.parametrize("values, row, said", [
    (np.full(N, -2), 0, "is -2"),
    (np.r_[np.zeros(7, np.int64), 2 ** 33, np.zeros(N - 8, np.int64)], 7, "is 8589934592"),
    (np.r_[np.zeros(3, np.uint64), np.full(N - 3, 2 ** 63, np.uint64)], 3, "is 9223"),
])
def test_a_bad_label_is_named_by_its_npy_file_and_row(arrays, values, row, said):
    d = arrays["dir"]
    np.save(d / "diag_bad.npy", values)
    with pytest.raises(DataError) as e:
        prepare_arrays(d / "out", {"eeg": d / "eeg.npy"}, ids=d / "ids.txt",
                       labels={"label.diag": d / "diag_bad.npy"})
    msg = str(e.value)
    assert msg.startswith(f"{d / 'diag_bad.npy'}: row {row} "
                          f"(sample '{arrays['ids'][row]}'): label 'label.diag' {said}"), msg
    assert "-1 for unknown" in msg and ".tmp" not in msg
    np.save(d / "diag_ok.npy", np.where(np.arange(N) % 2, -1, 1))  # -1: unknown
    paths = prepare_arrays(d / "ok", {"eeg": d / "eeg.npy"},
                           labels={"label.diag": d / "diag_ok.npy"})
    assert set(read_site_table(paths["train"]).labels["label.diag"]) == {-1, 1}


def test_a_text_file_and_an_object_array_get_their_own_messages(arrays):
    d = arrays["dir"]
    (d / "text.npy").write_text("0.1 0.2\n0.3 0.4\n")
    np.save(d / "obj.npy", np.zeros((N, 2), dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"text.npy: not a NumPy .npy file .*np.save"):
        prepare_arrays(d / "out", {"eeg": d / "text.npy"})
    with pytest.raises(DataError, match=r"text.npy: not a NumPy .npy file"):
        prepare_arrays(d / "out", {"eeg": d / "eeg.npy"}, ids=d / "text.npy")
    for kwargs in ({}, {"labels": {"label": d / "obj.npy"}}):  # memory-mapped or loaded
        mods = {"eeg": d / ("eeg.npy" if kwargs else "obj.npy")}
        with pytest.raises(DataError, match=r"obj.npy: an object array \(dtype object\); "
                                            r"save (numbers|labels) with a plain dtype"):
            prepare_arrays(d / "out", mods, **kwargs)
    assert not (d / "out").exists()


def test_no_samples_is_refused_naming_the_files(arrays):
    d = arrays["dir"]
    np.save(d / "none.npy", np.zeros((0, 3), np.int16))
    np.save(d / "no_img.npy", np.zeros((0, 1, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"none.npy, \S*no_img.npy: no samples \(0 rows\)"):
        prepare_arrays(d / "out", {"a": d / "none.npy", "b": d / "no_img.npy"})
    assert not (d / "out").exists()


@pytest.mark.parametrize("lines, said", [
    (["a", "", "c"], r"ids.txt: line 2 is blank; give one id per line, one line per row"),
    (["a", "", "b", "c"], r"ids.txt: line 2 is blank"),  # an extra line: not the count
    (["a", "b\x07", "c"], r"ids.txt: line 2: sample id .* non-printable character U\+0007"),
    (["a", "cafe\u0301", "c"], r"ids.txt: line 2: sample id .* not in Unicode NFC form"),
    (["a", "b", "a"], r"ids.txt: sample id 'a' at line 1 and line 3; ids must be unique"),
])
def test_a_bad_sample_id_is_named_by_its_line_in_the_ids_file(tmp_path, lines, said):
    """Found before anything is staged (it was reported as a row of a split, in a
    staging folder gone by the time the user read it); a trailing blank line is fine."""
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    (tmp_path / "ids.txt").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=said):
        prepare_arrays(tmp_path / "out", {"x": tmp_path / "x.npy"}, ids=tmp_path / "ids.txt")
    assert not (tmp_path / "out").exists()
