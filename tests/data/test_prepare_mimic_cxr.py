"""prepare_mimic_cxr on a tiny tree in the MIMIC-CXR-JPG layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmvm.data.dataset import MultimodalDataset
from mmvm.data.prepare.mimic_cxr import CHEXPERT, label_column, prepare_mimic_cxr
from mmvm.data.store import DataError, read_site_table
from tests.support.published import mimic_tree as _tree


def test_pairs_labels_and_patient_split(tmp_path):
    _tree(tmp_path / "src")
    paths = prepare_mimic_cxr(tmp_path / "src", tmp_path / "out", size=16, seed=1)
    assert set(paths) == {f"{s}.{p}" for s in ("frontal", "lateral")
                          for p in ("train", "val", "test")}
    ids, subjects = {}, {}
    for split in ("train", "val", "test"):
        f = read_site_table(paths[f"frontal.{split}"])
        lat = read_site_table(paths[f"lateral.{split}"])
        assert f.sample_ids == lat.sample_ids
        assert f.tensors["frontal"].shape == (len(f), 1, 16, 16)
        assert f.tensors["frontal"].dtype == np.uint8 and f.modalities == ["frontal"]
        assert lat.modalities == ["lateral"]
        ids[split] = set(f.sample_ids)
        subjects[split] = set(f.columns["subject_id"].tolist())
        assert sorted(f.labels) == sorted(label_column(c) for c in CHEXPERT)
    allids = set().union(*ids.values())
    # every frontal x lateral pair of a study: 1 + 2x1 + 1x2 + 20
    assert {"50000001_d1_d2", "50000002_d3_d5", "50000002_d4_d5", "50000004_d7_d8",
            "50000004_d7_d9"} <= allids
    assert len(allids) == 25 and not any(i.startswith("50000003") for i in allids)
    assert not (subjects["train"] & subjects["val"]) and not (
        subjects["train"] & subjects["test"]) and not (subjects["val"] & subjects["test"])
    n = {k: len(v) for k, v in subjects.items()}
    assert n["train"] >= 14 and n["val"] >= 1 and n["test"] >= 1


def test_label_mapping(tmp_path):
    _tree(tmp_path / "src")
    paths = prepare_mimic_cxr(tmp_path / "src", tmp_path / "out", size=8)
    for p in paths.values():
        t = read_site_table(p)
        for i, sid in enumerate(t.sample_ids):
            got = [t.labels[label_column(c)][i] for c in CHEXPERT]
            if sid.startswith("50000004"):
                assert got == [-1] * 14  # study without a CheXpert row
            else:  # 1 -> 1, 0 -> 0, -1 -> 0, blank -> 0
                assert got == ([1, 0, 0, 0] * 4)[:14]


def test_image_matches_a_direct_resize(tmp_path):
    _tree(tmp_path / "src")
    paths = prepare_mimic_cxr(tmp_path / "src", tmp_path / "out", size=20)
    for split in ("train", "val", "test"):
        t = read_site_table(paths[f"lateral.{split}"])
        if "50000001_d1_d2" in t.sample_ids:
            i = t.sample_ids.index("50000001_d1_d2")
            p = (tmp_path / "src" / "files/p10/p10000001/s50000001/d2.jpg")
            want = np.asarray(Image.open(p).convert("L").resize((20, 20),
                              Image.Resampling.BICUBIC))
            got = t.tensors["lateral"][i, 0].astype(float)
            assert np.abs(got - want).mean() < 4  # JPEG draft decoding: near-exact
            ds = MultimodalDataset.from_parquet([paths[f"frontal.{split}"],
                                                 paths[f"lateral.{split}"]])
            assert ds.names == ["frontal", "lateral"] and bool(ds.mask.all())
            return
    pytest.fail("sample not found")


def test_missing_image_error_or_skip(tmp_path):
    _tree(tmp_path / "src")
    (tmp_path / "src" / "files/p11/p11000003/s50000004/d9.jpg").unlink()
    with pytest.raises(DataError, match=r"s50000004/d9.jpg: image file not found"):
        prepare_mimic_cxr(tmp_path / "src", tmp_path / "out", size=8)
    assert not (tmp_path / "out").exists()
    paths = prepare_mimic_cxr(tmp_path / "src", tmp_path / "out", size=8,
                              skip_missing=True)
    t = read_site_table(paths["frontal.train"])
    assert t.dataset_meta["dropped_missing_pairs"] == 1


def test_bad_label_value_names_file_row_column(tmp_path):
    _tree(tmp_path / "src")
    p = tmp_path / "src" / "mimic-cxr-2.0.0-chexpert.csv"
    lines = p.read_text().splitlines()
    lines[3] = lines[3].replace("1.0", "2.0", 1)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"chexpert.csv: column 'Atelectasis', row 2: "
                                        r"'2.0' is not 1, 0, -1 or blank"):
        prepare_mimic_cxr(tmp_path / "src", tmp_path / "out", size=8)
    assert not (tmp_path / "out").exists()
