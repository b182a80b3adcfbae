"""prepare_hippocampus on the authors' raw layout (written by write_hippocampus_raw)."""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.data import hippocampus as H
from mmvm.data.prepare.hippocampus import prepare_hippocampus
from mmvm.data.store import DataError, read_site_table


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
