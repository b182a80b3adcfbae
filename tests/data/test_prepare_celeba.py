"""prepare_celeba on a tiny tree in the published CelebA layout."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmvm.data.prepare import celeba
from mmvm.data.prepare.celeba import prepare_celeba
from mmvm.data.store import DataError, read_site_table
from tests.support.published import celeba_tree as _tree
from tests.support.published import record_chunks


def test_modalities_labels_and_splits(tmp_path):
    attrs = _tree(tmp_path / "src")
    paths = prepare_celeba(tmp_path / "src", tmp_path / "out", size=32)
    t = read_site_table(paths["train"])
    assert {k: len(read_site_table(p)) for k, p in paths.items()} == {
        "train": 4, "val": 1, "test": 2}
    assert t.sample_ids == ["000001", "000002", "000003", "000004"]
    assert t.tensors["image"].shape == (4, 3, 32, 32)
    assert t.tensors["attributes"].shape == (4, 40)
    assert t.tensors["attributes"].dtype == np.float32 and t.scales["attributes"] == 1.0
    for k, sid in enumerate(t.sample_ids):
        want = (attrs[f"{sid}.jpg"] > 0).astype(np.float32)
        np.testing.assert_array_equal(t.tensors["attributes"][k], want)
        assert t.labels["label.male"][k] == want[20]
        assert t.labels["label.5_o_clock_shadow"][k] == want[0]
    # the 20x20 centre square fills 20/148 of the crop -> about 4 px of 32, centred
    img = t.tensors["image"][0].astype(int)
    assert img[0, 16, 16] > 150 and img[1, 16, 16] < 90 and img[0, 2, 2] < 80
    assert t.dataset_meta["attributes"][20] == "Male"


def test_missing_image_leaves_nothing(tmp_path):
    _tree(tmp_path / "src")
    (tmp_path / "src" / "img_align_celeba" / "000006.jpg").unlink()
    with pytest.raises(DataError, match=r"000006.jpg: image file not found"):
        prepare_celeba(tmp_path / "src", tmp_path / "out", size=16)
    assert not (tmp_path / "out").exists()


def test_bad_attribute_line(tmp_path):
    _tree(tmp_path / "src")
    p = tmp_path / "src" / "list_attr_celeba.txt"
    lines = p.read_text().splitlines()
    lines[4] = lines[4].replace("-1", "0", 1)
    p.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"list_attr_celeba.txt: line 5: expected"):
        prepare_celeba(tmp_path / "src", tmp_path / "out")


def test_streams_one_row_group_at_a_time(tmp_path, monkeypatch):
    _tree(tmp_path / "src")
    whole = prepare_celeba(tmp_path / "src", tmp_path / "whole", size=16)
    decoded, chunks = record_chunks(monkeypatch, celeba)
    paths = prepare_celeba(tmp_path / "src", tmp_path / "out", size=16,
                           row_group_size=2)
    assert chunks == [(2, 2), (2, 2), (1, 1), (2, 2)]  # train 4, val 1, test 2
    assert len(decoded) == 7
    for k, p in paths.items():
        assert pq.read_table(p).equals(pq.read_table(whole[k]))
        assert pq.ParquetFile(p).metadata.num_row_groups == {"train": 2, "val": 1,
                                                             "test": 1}[k]
