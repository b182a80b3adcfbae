"""prepare_arrays --groups: windows of one trial stay on one side of the split."""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.cli import main
from mmvm.data.prepare.arrays import prepare_arrays
from mmvm.data.store import DataError, read_site_meta, read_site_table


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
    # each sample's trial is kept (carried column "group"): a score over the test
    # windows is as sure as its trials, not its windows (the federated summary's
    # interval counted 88 windows of 22 trials as 88)
    from mmvm.data.groups import group_count, read_groups

    test_ids = read_site_table(paths["test"]).sample_ids
    groups = read_groups([paths["test"]], test_ids)
    assert list(groups) == [i.split("-")[0] for i in test_ids]
    assert group_count(groups, np.arange(len(test_ids))) == len(trial_of(paths["test"]))
    assert group_count(groups, np.array([0, 1])) == 1  # two windows of one trial
    loose = prepare_arrays(tmp_path / "w", {"x": tmp_path / "x.npy"},
                           ids=tmp_path / "ids.txt", seed=3)
    assert len(trial_of(loose["train"]) & trial_of(loose["test"])) > trials // 2
    assert read_groups([loose["test"]], ["T000-w00"]) is None  # no groups: rows count
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
