"""prepare_cub on a tiny tree in the CUB image-captions layout."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmvm.data.prepare import cub
from mmvm.data.prepare.cub import EOS, EXC, PAD, encode, prepare_cub, tokenize
from mmvm.data.store import DataError, read_site_table
from tests.support.published import CUB_CAPTION as CAPTION
from tests.support.published import cub_tree as _tree
from tests.support.published import record_chunks


def test_tokeniser_and_encoding():
    assert tokenize("This bird, has RED wings.") == ["this", "bird", ",", "has", "red",
                                                     "wings", "."]
    w2i = {"<exc>": 0, "<pad>": 1, "<eos>": 2, "bird": 3}
    ids = encode("a bird bird", w2i, length=6)
    assert ids.tolist() == [EXC, 3, 3, EOS, PAD, PAD]
    assert encode("bird " * 50, w2i, 8).tolist() == [3] * 7 + [EOS]  # cut to 31 + eos


def test_samples_per_caption_vocab_and_labels(tmp_path):
    _tree(tmp_path / "src")
    paths = prepare_cub(tmp_path / "src", tmp_path / "out", size=16, min_occ=3)
    tr, te = read_site_table(paths["train"]), read_site_table(paths["test"])
    assert len(tr) == 4 * 10 and len(te) == 2 * 10
    assert tr.tensors["image"].shape == (40, 3, 16, 16)
    assert tr.tensors["text"].shape == (40, 32) and tr.tensors["text"].dtype == np.float32
    assert tr.sample_ids[:2] == ["1-0", "1-1"]
    assert tr.labels["label"].tolist() == [0] * 20 + [1] * 20
    vocab = tr.dataset_meta["vocab"]
    assert vocab[:3] == ["<exc>", "<pad>", "<eos>"] and te.dataset_meta["vocab"] == vocab
    # words of CAPTION appear 20 times in train (> 3): in the vocabulary;
    # "number" (20 times) too; odd digits 4 times each (> 3); "0" never
    words = [vocab[int(i)] for i in tr.tensors["text"][0]]
    assert words[:11] == tokenize(CAPTION) and words[11] == "<eos>"
    assert set(words[12:]) == {"<pad>"}
    assert "number" in vocab and "0" not in vocab
    np.testing.assert_array_equal(tr.tensors["image"][0], tr.tensors["image"][9])
    assert tr.tensors["image"][0, 2].mean() > 190  # blue channel 200


def test_missing_caption_file_and_short_caption_file(tmp_path):
    _tree(tmp_path / "src")
    (tmp_path / "src/text/002.Laysan_Albatross/Laysan_Albatross_1.txt").unlink()
    with pytest.raises(DataError, match=r"Laysan_Albatross_1.txt: caption file missing"):
        prepare_cub(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    _tree(tmp_path / "src2", caps=5)
    with pytest.raises(DataError, match=r"5 captions, expected at least 10"):
        prepare_cub(tmp_path / "src2", tmp_path / "out")
    paths = prepare_cub(tmp_path / "src2", tmp_path / "out", captions_per_image=5)
    assert len(read_site_table(paths["train"])) == 20


@pytest.mark.parametrize("group, chunks", [
    (20, [(20, 2), (20, 2), (20, 2)]),  # 2 images x 10 captions per chunk
    (5, [(10, 1)] * 6),  # a row group smaller than one image's captions
])
def test_streams_about_one_row_group_of_images(tmp_path, monkeypatch, group, chunks):
    _tree(tmp_path / "src")
    whole = prepare_cub(tmp_path / "src", tmp_path / "whole", size=16)
    decoded, seen = record_chunks(monkeypatch, cub)
    paths = prepare_cub(tmp_path / "src", tmp_path / "out", size=16,
                        row_group_size=group)
    assert seen == chunks and len(decoded) == 6
    for k, p in paths.items():
        assert pq.read_table(p).equals(pq.read_table(whole[k]))
        md = pq.ParquetFile(p).metadata
        assert {md.row_group(i).num_rows for i in range(md.num_row_groups)} == {group}
