"""MultimodalDataset.from_parquet: site files joined on sample_id, with a mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmvm.data.dataset import MultimodalDataset
from mmvm.data.store import DataError, write_site_table


def _site(path, ids, name, shape, dtype, seed, label=True):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        x = rng.integers(0, 256, (len(ids), *shape), dtype=np.uint8)
    else:
        x = rng.normal(size=(len(ids), *shape)).astype(np.float32)
    labels = {"label": np.array([int(s[1:]) % 4 for s in ids])} if label else None
    write_site_table(path, ids, {name: x}, labels, {"site": name})
    return dict(zip(ids, x, strict=True))


def test_join_with_missing_modalities_sets_mask_and_zeros(tmp_path):
    a_ids = ["s03", "s01", "s02", "s05"]  # unsorted on purpose
    b_ids = ["s02", "s04", "s03"]
    xa = _site(tmp_path / "a.parquet", a_ids, "img", (1, 2, 2), np.uint8, 0)
    xb = _site(tmp_path / "b.parquet", b_ids, "vec", (3,), np.float32, 1, label=False)
    ds = MultimodalDataset.from_parquet([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    assert ds.sample_ids == ["s01", "s02", "s03", "s04", "s05"]
    assert ds.names == ["img", "vec"]
    expect_mask = [[True, False], [True, True], [True, True], [False, True],
                   [True, False]]
    assert ds.mask.tolist() == expect_mask
    b = ds.batch(range(5))
    for i, sid in enumerate(ds.sample_ids):
        if sid in xa:
            torch.testing.assert_close(b["x"]["img"][i],
                                       torch.from_numpy(xa[sid]).float() / 255)
        else:
            assert not b["x"]["img"][i].any()
        if sid in xb:
            torch.testing.assert_close(b["x"]["vec"][i], torch.from_numpy(xb[sid]))
        else:
            assert not b["x"]["vec"][i].any()
    # labels only from site a; s04 has none -> -1
    assert b["label"].tolist() == [1, 2, 3, -1, 1]
    assert b["index"].tolist() == [0, 1, 2, 3, 4]


def test_join_selected_names_and_order(tmp_path):
    _site(tmp_path / "a.parquet", ["s1", "s2"], "img", (1, 2, 2), np.uint8, 0)
    _site(tmp_path / "b.parquet", ["s1", "s2"], "vec", (3,), np.float32, 1)
    ds = MultimodalDataset.from_parquet([tmp_path / "a.parquet", tmp_path / "b.parquet"],
                                        names=["vec", "img"])
    assert ds.names == ["vec", "img"] and ds.mask.all()
    only = MultimodalDataset.from_parquet([tmp_path / "a.parquet", tmp_path / "b.parquet"],
                                          names=["vec"])
    assert only.names == ["vec"]


def test_join_rejects_conflicts(tmp_path):
    _site(tmp_path / "a.parquet", ["s1", "s2"], "vec", (3,), np.float32, 0)
    _site(tmp_path / "b.parquet", ["s2", "s3"], "vec", (3,), np.float32, 1)
    with pytest.raises(DataError, match=r"b.parquet: sample id 's2' holds modality "
                                        r"'vec' in more than one site file"):
        MultimodalDataset.from_parquet([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    _site(tmp_path / "c.parquet", ["s9"], "vec", (4,), np.float32, 2)
    with pytest.raises(DataError, match=r"c.parquet: modality 'vec' has shape"):
        MultimodalDataset.from_parquet([tmp_path / "a.parquet", tmp_path / "c.parquet"])
    with pytest.raises(DataError, match=r"nope.parquet: no such site file"):
        MultimodalDataset.from_parquet([tmp_path / "nope.parquet"])
