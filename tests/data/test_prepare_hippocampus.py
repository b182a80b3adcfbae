"""prepare_hippocampus on the authors' raw layout (written by write_hippocampus_raw)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mmvm.data import hippocampus as H
from mmvm.data.prepare.hippocampus import keyed_ids, prepare_hippocampus
from mmvm.data.store import DataError, read_site_meta, read_site_table


def test_prepare_of_raw_equals_the_lookalike(tmp_path):
    raw = H.write_hippocampus_raw(tmp_path / "raw", seed=3, trials_per_odor=5)
    assert sorted(raw) == sorted(H.RATS)
    assert (tmp_path / "raw" / "mitt" / "mitt_spike_data_binned.npy").is_file()
    info = np.load(tmp_path / "raw" / "mitt" / "mitt_trial_info.npy")
    assert info.shape[1] == 4 and set(np.unique(info[:, 3])) <= {1, 2, 3, 4, 5}
    got = prepare_hippocampus(tmp_path / "raw", tmp_path / "out", seed=3)
    want = H.make_hippocampus(tmp_path / "ref", seed=3, trials_per_odor=5)
    assert set(got) == {"train", "test"}
    for split in got:
        a, b = read_site_table(got[split]), read_site_table(want[split])
        assert a.sample_ids == b.sample_ids
        np.testing.assert_array_equal(a.labels["label"], b.labels["label"])
        for m in H.MODALITIES:
            np.testing.assert_array_equal(a.tensors[m], b.tensors[m])
        assert a.dataset_meta["rats"]["rat3"] == "mitt"


def test_custom_onsets_and_correct_only(tmp_path):
    H.write_hippocampus_raw(tmp_path / "raw", seed=0, trials_per_odor=4,
                            onsets=(3, 3, 5, 5, 3), post_bins=2,
                            neurons=(6, 5, 7, 4, 3))
    out = prepare_hippocampus(tmp_path / "raw", tmp_path / "out",
                              onsets=(3, 3, 5, 5, 3), correct_only=True)
    t = read_site_table(out["train"])
    assert [t.tensors[m].shape[1] for m in H.MODALITIES] == [6, 5, 7, 4, 3]
    for m, rat in zip(H.MODALITIES, H.RATS, strict=True):
        info = np.load(tmp_path / "raw" / rat / f"{rat}_trial_info.npy")
        assert info[t.columns[f"source_trial.{m}"], 0].all()  # only correct trials


def test_errors_name_the_file_and_leave_no_output(tmp_path):
    H.write_hippocampus_raw(tmp_path / "raw", seed=0, trials_per_odor=3,
                            onsets=(3, 3, 5, 5, 3), post_bins=0,
                            neurons=(6, 5, 7, 4, 3))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"window \[225, 250\) outside the 28 recorded"):
        prepare_hippocampus(tmp_path / "raw", out)
    assert not out.exists()
    info_path = tmp_path / "raw" / "stella" / "stella_trial_info.npy"
    info = np.load(info_path)
    info[2, 3] = 9
    np.save(info_path, info)
    with pytest.raises(DataError, match=r"stella_trial_info.npy: column 3, trial 2: "
                                        r"odor 9 not in 1..5"):
        prepare_hippocampus(tmp_path / "raw", out, onsets=(3, 3, 5, 5, 3))
    (tmp_path / "raw" / "barat" / "barat_spike_data_binned.npy").unlink()
    with pytest.raises(DataError, match=r"barat_spike_data_binned.npy: missing"):
        prepare_hippocampus(tmp_path / "raw", out, onsets=(3, 3, 5, 5, 3))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_lab_that_holds_one_rat_prepares_it_as_the_full_set_would(tmp_path, capsys):
    """One lab per rat, no spikes shared: each lab prepares its own rat folder with
    the federation's aligned trials per odor (the fewest of any rat) and the same
    seed, and writes exactly that rat's column of the all-rats preparation (same
    sample ids, split and windows, the same modality name), so the labs' files
    join by sample id. Without the counts a lone rat aligns more of its trials."""
    import shutil

    from mmvm.cli import main

    H.write_hippocampus_raw(tmp_path / "raw", seed=1, trials_per_odor=6)
    full = prepare_hippocampus(tmp_path / "raw", tmp_path / "all", seed=5)
    counts = read_site_meta(full["train"])["dataset"]["aligned_per_odor"]
    prints = set()  # what the labs compare: the split's settings and their fingerprint
    for rat, m in (("barat", "rat1"), ("stella", "rat4")):
        shutil.copytree(tmp_path / "raw" / rat, tmp_path / f"lab-{rat}" / rat)
        argv = ["data", "prepare", "hippocampus", str(tmp_path / f"lab-{rat}"), "--out",
                str(tmp_path / f"site-{rat}"), "--rats", rat, "--seed", "5", "--quiet",
                "--aligned", ",".join(map(str, counts))]
        assert main(argv) == 0
        said = capsys.readouterr().out
        assert f"aligned trials per odor: {','.join(map(str, counts))}" in said
        prints.add(re.search(r"the split: (.*?), fingerprint (\w{12}) ", said).groups())
        for split in ("train", "test"):
            lab = read_site_table(tmp_path / f"site-{rat}" / f"{split}.parquet")
            ref = read_site_table(full[split])
            assert list(lab.tensors) == [m] and lab.sample_ids == ref.sample_ids
            np.testing.assert_array_equal(lab.tensors[m], ref.tensors[m])
            np.testing.assert_array_equal(lab.labels["label"], ref.labels["label"])
    assert len(prints) == 1, prints  # the two labs print the same fingerprint
    assert prints.pop()[0] == f"--aligned {','.join(map(str, counts))} --seed 5 " \
                              f"--test-fraction 0.2"
    alone = prepare_hippocampus(tmp_path / "lab-barat", tmp_path / "alone", rats=["barat"],
                                seed=5)
    assert read_site_meta(alone["train"])["dataset"]["aligned_per_odor"] != counts
    with pytest.raises(DataError, match=r"aligned trials per odor \[99, 1, 1, 1\]: need 4 "
                                        r"counts, each at least 1 and at most"):
        prepare_hippocampus(tmp_path / "lab-barat", tmp_path / "x", rats=["barat"],
                            aligned=[99, 1, 1, 1])


def test_a_lab_names_its_rat_as_the_federations_config_does(tmp_path):
    """A lab's rat that is not one of the authors' became ``rat1`` at every such lab;
    ``names`` gives it the federation's name, and the same windows."""
    H.write_hippocampus_raw(tmp_path / "raw", seed=2, trials_per_odor=5)
    full = prepare_hippocampus(tmp_path / "raw", tmp_path / "all", seed=1)
    counts = read_site_meta(full["train"])["dataset"]["aligned_per_odor"]
    lab = prepare_hippocampus(tmp_path / "raw", tmp_path / "lab", rats=["stella"],
                              names=["lab_b"], seed=1, aligned=counts)
    got, ref = read_site_table(lab["train"]), read_site_table(full["train"])
    assert list(got.tensors) == ["lab_b"] and got.sample_ids == ref.sample_ids
    np.testing.assert_array_equal(got.tensors["lab_b"], ref.tensors["rat4"])
    assert read_site_meta(lab["train"])["dataset"]["label_names"] == {
        "label": ["A", "B", "C", "D"]}  # the legends say odors, not 0-3
    for kwargs, match in ((dict(rats=["stella"], names=["a", "b"]), "one distinct name"),
                          (dict(rats=["stella"], names=["a b"]), "one distinct name"),
                          (dict(rats=["myrat"]), "give --onsets, the first bin")):
        with pytest.raises(ValueError, match=match):
            prepare_hippocampus(tmp_path / "raw", tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_keyed_ids_say_nothing_of_the_odor_and_still_pair_the_labs(tmp_path):
    """``A012-w03`` tells a plaintext server each sample's odor; under the labs' key
    the ids are an HMAC, the same at every lab, so the rats still pair."""
    H.write_hippocampus_raw(tmp_path / "raw", seed=4, trials_per_odor=5)
    key = b"a secret only the labs hold, 32b"
    full = prepare_hippocampus(tmp_path / "raw", tmp_path / "all", seed=2, id_key=key)
    counts = read_site_meta(full["train"])["dataset"]["aligned_per_odor"]
    lab = prepare_hippocampus(tmp_path / "raw", tmp_path / "lab", rats=["mitt"], seed=2,
                              aligned=counts, id_key=key)
    plain = prepare_hippocampus(tmp_path / "raw", tmp_path / "plain", seed=2)
    for split in ("train", "test"):
        ids = read_site_table(full[split]).sample_ids
        assert read_site_table(lab[split]).sample_ids == ids  # the labs still pair
        assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids), ids[:3]
        assert len(set(ids)) == len(ids)
        assert ids == keyed_ids(read_site_table(plain[split]).sample_ids, key)
    assert "HMAC-SHA256" in read_site_meta(full["train"])["dataset"]["recipe"]["sample_id"]
    with pytest.raises(ValueError, match="give at least 16"):
        prepare_hippocampus(tmp_path / "raw", tmp_path / "x", id_key=b"short")
