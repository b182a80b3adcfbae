"""prepare_arrays: a user's own .npy arrays -> site Parquet, split by sample id,
and the config sections it prints."""

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
from tests.data.conftest import N


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
