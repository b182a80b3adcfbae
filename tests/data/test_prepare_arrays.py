"""prepare_arrays: a user's own .npy arrays -> site Parquet, split by sample id."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

from mmvm.cli import main
from mmvm.config import config_from_dict
from mmvm.data.dataset import MultimodalDataset
from mmvm.data.prepare.arrays import held_out, load_labels, prepare_arrays
from mmvm.data.prepare.snippet import config_snippet
from mmvm.data.store import DataError, read_site_meta, read_site_table

N = 120


@pytest.fixture
def arrays(tmp_path) -> dict:
    """An EEG-like float64 vector modality and a 28 px grey image, with ids and
    labels; the image site holds the same samples in another row order."""
    rng = np.random.default_rng(0)
    ids = [f"subject-{i:03d}" for i in range(N)]
    eeg = rng.normal(size=(N, 4, 6))
    img = rng.integers(0, 256, size=(N, 1, 28, 28), dtype=np.uint8)
    label = rng.integers(0, 3, size=N)
    perm = rng.permutation(N)
    np.save(tmp_path / "eeg.npy", eeg)
    np.save(tmp_path / "label.npy", label)
    np.save(tmp_path / "img.npy", img[perm])
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    np.save(tmp_path / "ids_img.npy", np.array(ids)[perm])
    return {"ids": ids, "eeg": eeg, "img": img, "label": label, "dir": tmp_path}


def test_two_sites_split_their_shared_samples_alike(arrays):
    d = arrays["dir"]
    a = prepare_arrays(d / "a", {"eeg": d / "eeg.npy"}, ids=d / "ids.txt",
                       labels={"label": d / "label.npy"}, seed=7)
    b = prepare_arrays(d / "b", {"img": d / "img.npy"}, ids=d / "ids_img.npy", seed=7)
    row = {i: k for k, i in enumerate(arrays["ids"])}
    for split in ("train", "test"):
        ta, tb = read_site_table(a[split]), read_site_table(b[split])
        assert set(ta.sample_ids) == set(tb.sample_ids)  # whatever the row order
        rows = [row[i] for i in ta.sample_ids]
        np.testing.assert_array_equal(ta.tensors["eeg"],
                                      arrays["eeg"][rows].astype(np.float32))
        np.testing.assert_array_equal(ta.labels["label"], arrays["label"][rows])
        np.testing.assert_array_equal(tb.tensors["img"],
                                      arrays["img"][[row[i] for i in tb.sample_ids]])
    n_test = len(read_site_table(a["test"]).sample_ids)
    assert 0.1 * N < n_test < 0.35 * N  # test_fraction 0.2
    # the split is a function of (seed, id) alone
    again = held_out(arrays["ids"][::-1], 0.2, 7)[::-1]
    np.testing.assert_array_equal(again, held_out(arrays["ids"], 0.2, 7))
    assert (held_out(arrays["ids"], 0.2, 8) != again).any()


def test_the_printed_config_sections_make_a_model_that_reads_the_files(arrays):
    d = arrays["dir"]
    np.save(d / "img_rows.npy", arrays["img"])
    paths = prepare_arrays(d / "both", {"eeg": d / "eeg.npy", "img": d / "img_rows.npy"},
                           ids=d / "ids.txt", labels={"label": d / "label.npy"})
    snippet = config_snippet(paths)
    assert 'network = "conv28"' in snippet and 'kind = "vector"' in snippet
    mods = tomllib.loads(snippet)["model"]["modalities"]
    cfg = config_from_dict({"data": {"root": str(d / "both")},
                            "model": {"latent_dim": 4, "modalities": mods}})
    ds = MultimodalDataset.from_parquet(cfg.data.files("train"), ["eeg", "img"], "label")
    batch = ds.batch(range(8))
    assert batch["x"]["img"].shape == (8, 1, 28, 28) and batch["x"]["img"].max() <= 1.0
    assert batch["x"]["eeg"].shape == (8, 4, 6)


def test_a_named_label_is_given_as_the_configs_data_label(arrays):
    """``--label odor=...`` writes ``label.odor``; a config copied from
    hippocampus.toml reads ``label``, and its probes found no labels."""
    d = arrays["dir"]
    paths = prepare_arrays(d / "odor", {"eeg": d / "eeg.npy"}, ids=d / "ids.txt",
                           labels={"label.odor": d / "label.npy",
                                   "label.rat": d / "label.npy"})
    snippet = config_snippet(paths)
    assert snippet.endswith('(the default, "label", is not in these files; or '
                            'label.rat):\n#   label = "label.odor"')
    assert "[data]" not in tomllib.loads(snippet)  # a comment: the config has [data]
    plain = prepare_arrays(d / "plain", {"eeg": d / "eeg.npy"}, ids=d / "ids.txt",
                           labels={"label": d / "label.npy"})
    assert "label = " not in config_snippet(plain)


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


def test_the_command(arrays, capsys):
    d = arrays["dir"]
    assert main(["data", "prepare", "arrays", "--modality", f"eeg={d / 'eeg.npy'}",
                 "--ids", str(d / "ids.txt"), "--label", str(d / "label.npy"),
                 "--label", f"sex={d / 'label.npy'}", "--out", str(d / "cli"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "[model.modalities.eeg]" in out and "shape = [4, 6]" in out
    assert set(read_site_table(d / "cli" / "train.parquet").labels) == {"label",
                                                                        "label.sex"}
    assert main(["data", "prepare", "arrays", "--modality", str(d / "eeg.npy"),
                 "--out", str(d / "x")]) == 2
    assert "expected NAME=FILE.npy" in capsys.readouterr().err


def test_ids_written_differently_still_agree(arrays):
    """A text file with a byte-order mark and blanks, a .npy of padded strings, and
    plain ids give the same ids, hence the same split."""
    d = arrays["dir"]
    (d / "bom.txt").write_text("\ufeff" + "\n".join(f" {i} " for i in arrays["ids"]),
                               encoding="utf-8")
    np.save(d / "padded.npy", np.array([f"{i}  " for i in arrays["ids"]]))
    got = [read_site_table(prepare_arrays(d / name, {"eeg": d / "eeg.npy"},
                                          ids=d / f)["test"]).sample_ids
           for name, f in (("a", "ids.txt"), ("b", "bom.txt"), ("c", "padded.npy"))]
    assert got[0] == got[1] == got[2]


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
    with pytest.raises(ValueError, match="not 'sample_id' or 'label"):
        prepare_arrays(d / "out", {"label": d / "eeg.npy"})
    with pytest.raises(ValueError, match="letters, digits"):
        prepare_arrays(d / "out", {"my eeg": d / "eeg.npy"})
    with pytest.raises(DataError, match=r"scalar.npy: .* expected \[N samples"):
        prepare_arrays(d / "out", {"s": d / "scalar.npy"})
    with pytest.raises(DataError, match="bernoulli"):
        prepare_arrays(d / "out", {"f": d / "flags.npy"})
    with pytest.raises(DataError, match=r"astype\(str\)"):
        prepare_arrays(d / "out", {"eeg": d / "eeg.npy"}, ids=d / "objects.npy")
    assert not (d / "out").exists()


def test_image_shaped_numbers_get_a_note_in_the_config_sections(arrays):
    d = arrays["dir"]
    np.save(d / "xray.npy", arrays["img"].astype(np.float32) / 255)
    paths = prepare_arrays(d / "f", {"xray": d / "xray.npy"}, ids=d / "ids.txt")
    snippet = config_snippet(paths)
    assert "save them as uint8 [N, C, H, W]" in snippet and 'kind = "vector"' in snippet
    tomllib.loads(snippet)  # still a valid TOML fragment
    # grey images without their channel axis (uint8 [N, H, W]): they read as vectors
    np.save(d / "grey.npy", arrays["img"][:, 0])
    paths = prepare_arrays(d / "g", {"grey": d / "grey.npy"}, ids=d / "ids.txt")
    snippet = config_snippet(paths)
    assert "If these are grey images, add their channel axis (uint8 [N, 1, 28, 28]: " \
           "a[:, None])" in snippet
    tomllib.loads(snippet)


def test_counts_get_the_poisson_suggestion_and_signed_integers_do_not(arrays):
    d = arrays["dir"]
    rng = np.random.default_rng(1)
    np.save(d / "spikes.npy", rng.poisson(2.0, size=(N, 5, 3)).astype(np.int16))
    np.save(d / "delta.npy", rng.integers(-3, 3, size=(N, 4)).astype(np.int16))
    paths = prepare_arrays(d / "c", {"spikes": d / "spikes.npy", "delta": d / "delta.npy"},
                           ids=d / "ids.txt")
    snippet = config_snippet(paths)
    assert '# spikes: non-negative integers (int16): if these are counts' in snippet
    assert "# delta:" not in snippet
    mods = tomllib.loads(snippet)["model"]["modalities"]
    mods["spikes"]["likelihood"] = "poisson"
    config_from_dict({"model": {"latent_dim": 2, "modalities": mods}})  # a valid model


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


def test_a_folder_with_site_files_is_kept_unless_forced(arrays, capsys):
    d = arrays["dir"]
    cmd = ["data", "prepare", "arrays", "--modality", f"eeg={d / 'eeg.npy'}", "--ids",
           str(d / "ids.txt"), "--out", str(d / "site"), "--quiet"]
    assert main(cmd) == 0
    before = (d / "site" / "train.parquet").read_bytes()
    capsys.readouterr()
    assert main([*cmd, "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert f"{d / 'site'}: already holds site files (test.parquet, train.parquet)" in err
    assert "--force" in err
    assert (d / "site" / "train.parquet").read_bytes() == before
    assert main([*cmd, "--seed", "3", "--force"]) == 0
    assert read_site_meta(d / "site" / "train.parquet")["dataset"]["seed"] == 3
    (d / "other").mkdir()
    (d / "other" / "notes.txt").write_text("not a site file")
    prepare_arrays(d / "other", {"eeg": d / "eeg.npy"})  # nothing to write over


def test_groups_keep_every_trials_windows_on_one_side_of_the_split(tmp_path):
    """Overlapping windows of one trial are not independent samples: split by trial,
    no trial has windows in both train and test (split by window id, most would)."""
    trials, per = 60, 8
    ids = [f"T{t:03d}-w{w:02d}" for t in range(trials) for w in range(per)]
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(len(ids), 5)))
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    (tmp_path / "trial.txt").write_text("\n".join(i.split("-")[0] for i in ids) + "\n")
    trial_of = lambda path: {i.split("-")[0] for i in read_site_table(path).sample_ids}  # noqa: E731

    paths = prepare_arrays(tmp_path / "g", {"x": tmp_path / "x.npy"}, ids=tmp_path / "ids.txt",
                           groups=tmp_path / "trial.txt", seed=3)
    assert not trial_of(paths["train"]) & trial_of(paths["test"])
    assert 0.1 * trials < len(trial_of(paths["test"])) < 0.35 * trials
    assert read_site_meta(paths["train"])["dataset"]["split_by"].startswith("group (60 groups")
    loose = prepare_arrays(tmp_path / "w", {"x": tmp_path / "x.npy"},
                           ids=tmp_path / "ids.txt", seed=3)
    assert len(trial_of(loose["train"]) & trial_of(loose["test"])) > trials // 2
    (tmp_path / "short.txt").write_text("T000\n")
    with pytest.raises(DataError, match=r"short.txt: 1 group ids, the arrays have 480 rows"):
        prepare_arrays(tmp_path / "s", {"x": tmp_path / "x.npy"}, groups=tmp_path / "short.txt")
    assert not (tmp_path / "s").exists()  # nothing written


def test_the_cli_splits_by_group_and_says_so(tmp_path, capsys):
    ids = [f"T{t}-w{w}" for t in range(20) for w in range(4)]
    np.save(tmp_path / "x.npy", np.zeros((len(ids), 3)))
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    (tmp_path / "trial.txt").write_text("\n".join(i.split("-")[0] for i in ids))
    assert main(["data", "prepare", "arrays", "--modality", f"x={tmp_path / 'x.npy'}",
                 "--ids", str(tmp_path / "ids.txt"), "--groups", str(tmp_path / "trial.txt"),
                 "--out", str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"split by group ({tmp_path / 'trial.txt'})" in out and "--groups" not in out
    assert main(["data", "prepare", "arrays", "--modality", f"x={tmp_path / 'x.npy'}",
                 "--ids", str(tmp_path / "ids.txt"), "--out", str(tmp_path / "o2"),
                 "--quiet"]) == 0
    assert "give --groups" in capsys.readouterr().out


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


def test_one_group_for_all_rows_says_so(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 2)))
    (tmp_path / "trial.txt").write_text("T0\n" * 10)
    with pytest.raises(DataError, match=r"split is empty \(10 samples in 1 groups, each "
                                        r"wholly in one split.*give more samples or groups"):
        prepare_arrays(tmp_path / "out", {"x": tmp_path / "x.npy"},
                       groups=tmp_path / "trial.txt")
    (tmp_path / "trial.txt").write_text("T0\n" * 4 + "\n" + "T1\n" * 5)
    with pytest.raises(DataError, match=r"trial.txt: line 5 is blank; give one id per line"):
        prepare_arrays(tmp_path / "out", {"x": tmp_path / "x.npy"},
                       groups=tmp_path / "trial.txt")


@pytest.mark.parametrize("form", ["npy", "txt"])
def test_class_names_become_ids_in_sorted_order_and_are_listed(arrays, form):
    """Labels as names ("pacemaker"), in a .npy of strings or a text file: ids in
    sorted name order, an empty name unknown (-1), and the config sections list what
    each id means (they were refused; a text file was "expected a NumPy .npy")."""
    import pyarrow.parquet as pq

    d = arrays["dir"]
    names = np.array(["pacemaker", "none", "", "line"] * (N // 4))
    if form == "npy":
        np.save(d / "device.npy", names)
        path = d / "device.npy"
    else:
        path = d / "device.txt"
        path.write_text("\n".join(names) + "\n")
    out = prepare_arrays(d / form, {"eeg": d / "eeg.npy"}, ids=d / "ids.txt",
                         labels={"label.device": path})
    table = pq.read_table(out["train"]).to_pydict()
    ids = {i: n for i, n in zip(arrays["ids"], names, strict=True)}
    want = {"pacemaker": 2, "none": 1, "line": 0, "": -1}
    assert all(table["label.device"][k] == want[ids[s]]
               for k, s in enumerate(table["sample_id"]))
    assert "# label.device: 0 = line, 1 = none, 2 = pacemaker" in config_snippet(out)
    # a text file of class ids reads as ids
    (d / "ids_labels.txt").write_text("\n".join(str(v) for v in arrays["label"]))
    out = prepare_arrays(d / f"{form}2", {"eeg": d / "eeg.npy"}, ids=d / "ids.txt",
                         labels={"label": d / "ids_labels.txt"})
    assert "# label" not in config_snippet(out).replace("# in the config", "")
    # ids written as text, a blank line unknown: ids, not names sorted as text
    # ('10' before '2', '-1' a class of its own)
    (d / "ids_blank.txt").write_text("\n".join(["0", "1", "", "10", "-1"] * (N // 5)))
    got, names = load_labels(d / "ids_blank.txt")
    assert names is None and got[:5].tolist() == [0, 1, -1, 10, -1]
    (d / "mixed.txt").write_text("\n".join(["none", "2"] * (N // 2)))
    with pytest.raises(DataError, match="holds the number '2' among class names"):
        load_labels(d / "mixed.txt")


def test_uint8_counts_shaped_like_an_image_are_noted(arrays):
    """Walkthrough: spikes saved as uint8 [N, 1, neurons, bins] were stored as pixels
    (scale 255) and refused by every image network, with no word that they looked
    like counts. Noted; a square image of full range is not."""
    d = arrays["dir"]
    spikes = np.random.default_rng(1).poisson(1.0, size=(N, 1, 60, 10)).astype(np.uint8)
    np.save(d / "spikes.npy", spikes)
    prepare_arrays(d / "s", {"rat": d / "spikes.npy"})
    assert len(read_site_table(d / "s" / "train.parquet").sample_ids) > N // 2
    (note,) = read_site_meta(d / "s" / "train.parquet")["dataset"]["notes"]
    assert note.startswith("rat: uint8 [1, 60, 10] is read as an image") and \
        "save it as int16 or int32" in note
    prepare_arrays(d / "i", {"img": d / "img.npy"})
    assert "notes" not in read_site_meta(d / "i" / "train.parquet")["dataset"]
    # a colour or a grey image of full range, not square: an image, no note
    photo = np.random.default_rng(2).integers(0, 256, (N, 3, 16, 12), dtype=np.uint8)
    np.save(d / "photo.npy", photo)
    np.save(d / "frame.npy", photo[:, :1])
    for name in ("photo", "frame"):
        paths = prepare_arrays(d / name, {name: d / f"{name}.npy"})
        assert "notes" not in read_site_meta(paths["train"])["dataset"]
        # (the sample count is the arrays', not a note's: the split is not empty)
        assert len(read_site_table(paths["train"]).sample_ids) > N // 2
