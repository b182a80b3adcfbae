"""prepare_polymnist_png on a tiny tree in the published layout."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmvm.data.prepare import polymnist_png
from mmvm.data.prepare.polymnist_png import prepare_polymnist_png
from mmvm.data.store import DataError, read_site_table
from tests.support.published import record_chunks


def _tree(root, n_per_digit=2, digits=(0, 3, 7), mods=3):
    rng = np.random.default_rng(0)
    imgs = {}
    for split in ("train", "test"):
        for m in range(mods):
            d = root / split / f"m{m}"
            d.mkdir(parents=True)
            for digit in digits:
                for i in range(n_per_digit):
                    a = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
                    Image.fromarray(a, "RGB").save(d / f"{i}.{digit}.png")
                    imgs[(split, m, i, digit)] = a
    return imgs


def test_pairs_by_file_name_and_keeps_pixels(tmp_path):
    imgs = _tree(tmp_path / "src")
    paths = prepare_polymnist_png(tmp_path / "src", tmp_path / "out")
    assert set(paths) == {"train", "test"}
    t = read_site_table(paths["train"])
    assert t.modalities == ["m0", "m1", "m2"] and len(t) == 6
    assert t.sample_ids == ["train-0-0", "train-0-1", "train-3-0", "train-3-1",
                            "train-7-0", "train-7-1"]
    assert t.labels["label"].tolist() == [0, 0, 3, 3, 7, 7]
    for k, sid in enumerate(t.sample_ids):
        _, digit, i = sid.split("-")
        for m in range(3):
            want = imgs[("train", m, int(i), int(digit))].transpose(2, 0, 1)
            np.testing.assert_array_equal(t.tensors[f"m{m}"][k], want)  # PNG lossless
    assert t.scales["m0"] == 255.0


def test_unpaired_file_is_an_error_and_nothing_is_written(tmp_path):
    _tree(tmp_path / "src")
    (tmp_path / "src" / "test" / "m2" / "1.3.png").unlink()
    with pytest.raises(DataError, match=r"test/m2/1.3.png: missing, but .*test/m0/1.3.png"
                                        r" exists"):
        prepare_polymnist_png(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_png_names_the_file(tmp_path):
    _tree(tmp_path / "src")
    (tmp_path / "src" / "test" / "m1" / "0.7.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"test/m1/0.7.png: cannot decode image"):
        prepare_polymnist_png(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no staging left behind


def test_streams_one_row_group_at_a_time(tmp_path, monkeypatch):
    _tree(tmp_path / "src")
    whole = prepare_polymnist_png(tmp_path / "src", tmp_path / "whole")
    decoded, chunks = record_chunks(monkeypatch, polymnist_png)
    paths = prepare_polymnist_png(tmp_path / "src", tmp_path / "out", row_group_size=4)
    assert chunks == [(4, 12), (2, 6)] * 2  # 6 samples of 3 modalities per split
    assert len(decoded) == len(set(decoded)) == 2 * 6 * 3
    for k, p in paths.items():
        assert pq.read_table(p).equals(pq.read_table(whole[k]))
        assert pq.ParquetFile(p).metadata.num_row_groups == 2
