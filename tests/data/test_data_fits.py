"""A config that does not fit the data is named before any row is read: the file,
the modality, its shape there and in the config (not a shape error at the first
batch that names neither)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmvm.cli import main
from mmvm.config import load_config
from mmvm.data import check_data_fits, open_dataset
from mmvm.data.store import DataError

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "polymnist_cpu.toml")


def test_a_shape_the_data_does_not_have_is_named_with_file_and_config(tiny_polymnist):
    train = tiny_polymnist / "train.parquet"
    cfg = load_config(CONFIG, ["model.modalities.m1.shape=[1, 28, 28]"])
    with pytest.raises(DataError, match=rf"{train}: m1 is \[3, 28, 28\] there, "
                                        rf"\[1, 28, 28\] in {CONFIG} "
                                        rf"\(model.modalities.m1.shape\)"):
        check_data_fits(cfg.model.modalities, [train], cfg.source)
    check_data_fits(load_config(CONFIG).model.modalities, [train], CONFIG)  # fits


def test_mmvm_train_refuses_it_before_training(tiny_polymnist, tmp_path, capsys):
    code = main(["train", "--config", CONFIG, "--no-progress",
                 "--set", f'data.root="{tiny_polymnist}"',
                 "--set", f'train.out_dir="{tmp_path / "run"}"',
                 "--set", "model.modalities.m0.shape=[1, 28, 28]"])
    assert code == 2
    err = capsys.readouterr().err
    assert "m0 is [3, 28, 28] there, [1, 28, 28] in" in err and "train.parquet" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("streaming", [False, True])
def test_a_modality_no_file_holds_names_what_they_hold(tiny_polymnist, streaming):
    cfg = load_config(CONFIG, [f"data.streaming={str(streaming).lower()}"])
    with pytest.raises(DataError, match=r"modalities \['image'\] are in no site file "
                                        r".*they hold \['m0', 'm1', 'm2'\]"):
        open_dataset(tiny_polymnist / "train.parquet", ["image"], cfg.data)
