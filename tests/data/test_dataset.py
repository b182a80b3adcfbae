"""mmvm.data.dataset.MultimodalDataset beyond the basic join (tests/data/test_site_join.py):
horizontal joins, rows_of, label conflicts, scales, limit, item/subset/select."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmvm.data.dataset import MultimodalDataset
from mmvm.data.store import DataError, write_site_table


def _write(path, ids, tensors, labels=None, scales=None):
    write_site_table(path, ids, tensors, None if labels is None else {"label": np.array(labels)},
                     {"site": path.stem}, scales=scales)
    return path


def test_horizontal_join_of_one_modality_and_labels(tmp_path):
    xa = np.arange(6, dtype=np.float32).reshape(3, 2)
    xb = -np.arange(4, dtype=np.float32).reshape(2, 2) - 1
    a = _write(tmp_path / "a.parquet", ["s2", "s0", "s4"], {"v": xa}, [2, 0, 4])
    b = _write(tmp_path / "b.parquet", ["s3", "s1"], {"v": xb}, [3, 1])
    ds = MultimodalDataset.from_parquet([a, b])
    assert ds.sample_ids == ["s0", "s1", "s2", "s3", "s4"] and ds.mask.all()
    bt = ds.batch(torch.arange(5))
    expect = np.stack([xa[1], xb[1], xa[0], xb[0], xa[2]])
    assert torch.equal(bt["x"]["v"], torch.from_numpy(expect))
    assert bt["label"].tolist() == [0, 1, 2, 3, 4]


def test_batch_divides_by_each_modalitys_scale(tmp_path):
    img = np.array([[[0, 51]], [[255, 102]]], dtype=np.uint8)  # [2, 1, 2]
    vec = np.array([[4.0, -8.0], [2.0, 1.0]], dtype=np.float32)
    p = _write(tmp_path / "s.parquet", ["x", "y"], {"img": img, "vec": vec},
               scales={"vec": 4.0})
    ds = MultimodalDataset.from_parquet(p)
    assert ds.scales == {"img": 255.0, "vec": 4.0}
    for _ in range(2):  # batching twice gives the same values: stored data untouched
        b = ds.batch([1, 0])
        assert b["x"]["img"].dtype == torch.float32
        torch.testing.assert_close(b["x"]["img"], torch.tensor([[[1.0, 0.4]], [[0.0, 0.2]]]))
        torch.testing.assert_close(b["x"]["vec"], torch.tensor([[0.5, 0.25], [1.0, -2.0]]))
    assert ds.tensors["img"].dtype == torch.uint8  # kept compact in memory
    assert b["mask"].dtype == torch.bool and b["mask"].shape == (2, 2)
    assert b["index"].dtype == torch.int64 and b["index"].tolist() == [1, 0]
    assert "label" not in b  # no label column, no label key


def test_rows_of_and_unknown_id(tmp_path):
    p = _write(tmp_path / "s.parquet", ["b", "a", "c"], {"v": np.zeros((3, 1), np.float32)})
    ds = MultimodalDataset.from_parquet(p)
    assert ds.rows_of(["c", "a", "b", "a"]).tolist() == [2, 0, 1, 0]
    assert ds.rows_of([]).tolist() == []
    with pytest.raises(DataError, match=r"unknown sample id 'zz' \(this dataset holds 3 ids\)"):
        ds.rows_of(["a", "zz", "b"])


def test_conflicting_labels_across_files_raise(tmp_path):
    a = _write(tmp_path / "a.parquet", ["s1", "s2"], {"u": np.zeros((2, 1), np.float32)},
               [1, 2])
    b = _write(tmp_path / "b.parquet", ["s2", "s3"], {"w": np.zeros((2, 1), np.float32)},
               [3, 0])
    with pytest.raises(DataError, match=r"b\.parquet: sample id 's2' has 'label' 3 here "
                                        r"and 2 in another site file .* label these "
                                        r"samples differently, or number the classes "
                                        r"differently .* the same --classes"):
        MultimodalDataset.from_parquet([a, b])
    # an unknown label (-1) never conflicts; the known one wins whatever the file order
    c = _write(tmp_path / "c.parquet", ["s2", "s3"], {"w": np.zeros((2, 1), np.float32)},
               [-1, 0])
    for order in ([a, c], [c, a]):
        assert MultimodalDataset.from_parquet(order).labels.tolist() == [1, 2, 0]


def test_other_label_column(tmp_path):
    write_site_table(tmp_path / "s.parquet", ["a", "b"], {"v": np.zeros((2, 1), np.float32)},
                     {"label": np.array([0, 1]), "label.odor": np.array([3, 2])}, {})
    ds = MultimodalDataset.from_parquet(tmp_path / "s.parquet", label="label.odor")
    assert ds.labels.tolist() == [3, 2]
    assert MultimodalDataset.from_parquet(tmp_path / "s.parquet", label="none").labels is None


def test_limit_keeps_the_hash_chosen_ids_in_sorted_order(tmp_path):
    """Not the first ids (class-sorted in some datasets): mmvm.subsample's choice."""
    from mmvm.subsample import keep_ids

    ids = [f"s{i}" for i in (5, 3, 9, 1, 7)]
    x = np.arange(5, dtype=np.float32)[:, None]
    p = _write(tmp_path / "s.parquet", ids, {"v": x})
    ds = MultimodalDataset.from_parquet(p, limit=3)
    want = keep_ids(sorted(ids), 3)
    assert ds.sample_ids == want and len(want) == 3
    assert ds.batch([0, 1, 2])["x"]["v"].flatten().tolist() == [
        float(ids.index(s)) for s in want]


def test_modality_in_no_file_raises(tmp_path):
    p = _write(tmp_path / "s.parquet", ["a"], {"v": np.zeros((1, 1), np.float32)})
    with pytest.raises(DataError, match=r"modalities \['w'\] are in no site file"):
        MultimodalDataset.from_parquet(p, names=["v", "w"])
    with pytest.raises(DataError, match="no site tables given"):
        MultimodalDataset.from_tables([])


def test_item_subset_select(tmp_path):
    a = _write(tmp_path / "a.parquet", ["s0", "s1", "s2"],
               {"u": np.arange(6, dtype=np.float32).reshape(3, 2)}, [0, 1, 2])
    b = _write(tmp_path / "b.parquet", ["s1"], {"w": np.ones((1, 3), np.float32)})
    ds = MultimodalDataset.from_parquet([a, b])
    assert len(ds) == 3 and ds.shapes == {"u": (2,), "w": (3,)}
    item = ds[1]
    assert torch.equal(item["x"]["u"], torch.tensor([2.0, 3.0]))
    assert torch.equal(item["x"]["w"], torch.ones(3))
    assert item["mask"].tolist() == [True, True] and int(item["label"]) == 1
    assert ds[0]["mask"].tolist() == [True, False] and not ds[0]["x"]["w"].any()

    sub = ds.subset([2, 1])
    assert sub.sample_ids == ["s2", "s1"] and sub.mask.tolist() == [[True, False], [True, True]]
    assert sub.labels.tolist() == [2, 1]
    assert torch.equal(sub.batch([0])["x"]["u"], torch.tensor([[4.0, 5.0]]))

    only = ds.select(["w"])
    assert only.names == ["w"] and only.mask.flatten().tolist() == [False, True, False]
    assert only.sample_ids == ds.sample_ids
    with pytest.raises(DataError, match=r"unknown modalities \['x'\]; this dataset has"):
        ds.select(["u", "x"])


def test_constructor_checks_sizes():
    with pytest.raises(DataError, match=r"modality 'v': 2 rows for 3 sample ids"):
        MultimodalDataset(["a", "b", "c"], {"v": np.zeros((2, 1))}, {"v": 1.0},
                          np.ones((3, 1), bool))
    with pytest.raises(DataError, match=r"mask has shape \(3, 2\), expected \(3, 1\)"):
        MultimodalDataset(["a", "b", "c"], {"v": np.zeros((3, 1))}, {"v": 1.0},
                          np.ones((3, 2), bool))
