"""prepare_mimic_cxr on a tiny tree in the MIMIC-CXR-JPG layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmvm.data.prepare.mimic_cxr as mc
from mmvm.data.dataset import MultimodalDataset
from mmvm.data.prepare.images import load_image
from mmvm.data.prepare.mimic_cxr import (
    CHEXPERT,
    label_column,
    patient_split,
    prepare_mimic_cxr,
)
from mmvm.data.store import DataError, read_site_meta, read_site_table, write_site_table
from tests.support.published import mimic_studies, record_chunks
from tests.support.published import mimic_tree as _tree

ROOT = Path(__file__).resolve().parents[2]


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
    # the patient is the group: probe intervals and cross-validated reads count it
    from mmvm.data.groups import read_groups

    test = read_site_table(paths["frontal.test"])
    groups = read_groups([paths["frontal.test"]], test.sample_ids)
    assert groups is not None and set(groups) == {str(s) for s in subjects["test"]}


@pytest.mark.parametrize("uncertain, as_", [("zeros", 0), ("ones", 1), ("ignore", -1)])
def test_label_mapping(tmp_path, uncertain, as_):
    """The source's findings are 1, 0, -1 (uncertain), blank, repeated; uncertain ones
    follow CheXpert's U-Zeros (the authors'), U-Ones or U-Ignore (-1: unknown)."""
    _tree(tmp_path / "src")
    paths = prepare_mimic_cxr(tmp_path / "src", tmp_path / "out", size=8,
                              uncertain=uncertain)
    for p in paths.values():
        t = read_site_table(p)
        for i, sid in enumerate(t.sample_ids):
            got = [t.labels[label_column(c)][i] for c in CHEXPERT]
            if sid.startswith("50000004"):
                assert got == [-1] * 14  # study without a CheXpert row
            else:  # 1 -> 1, 0 -> 0, -1 -> the policy's, blank -> 0
                assert got == ([1, 0, as_, 0] * 4)[:14]
    with pytest.raises(DataError, match="uncertain 'maybe': choose one of"):
        prepare_mimic_cxr(tmp_path / "src", tmp_path / "x", size=8, uncertain="maybe")


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


def test_the_authors_image_recipe_is_their_crop_resize_and_equalise(tmp_path):
    """agostini335/mmvm-mimic prepare_dataset.py: the central square, resized, its
    histogram equalised (ImageOps.equalize); the default resizes the whole image."""
    from PIL import ImageOps

    _tree(tmp_path / "src")
    paths = prepare_mimic_cxr(tmp_path / "src", tmp_path / "out", size=20, seed=1,
                              authors_images=True, view="lateral")
    for split in ("train", "val", "test"):
        t = read_site_table(paths[f"lateral.{split}"])
        if "50000001_d1_d2" not in t.sample_ids:
            continue
        img = Image.open(tmp_path / "src" / "files/p10/p10000001/s50000001/d2.jpg")
        img = img.convert("L")
        w, h = img.size
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
        want = np.asarray(ImageOps.equalize(img.crop(box).resize(
            (20, 20), Image.Resampling.BICUBIC))).astype(float)
        got = t.tensors["lateral"][t.sample_ids.index("50000001_d1_d2"), 0].astype(float)
        assert np.abs(got - want).mean() < 12, np.abs(got - want).mean()  # draft decoding
        assert got.min() < 20 and got.max() > 235  # equalised: the full grey range
        meta = read_site_meta(paths[f"lateral.{split}"])["dataset"]
        assert "histogram equalised" in meta["recipe"]["image"]
        return
    raise AssertionError("the pair 50000001_d1_d2 is in no split")


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


def test_undecodable_images_are_all_named_and_their_pairs_left_out(tmp_path):
    """A damaged download: without --skip-missing the first bad JPEG stops the prepare
    (naming the option); with it, every pair of a bad image is left out and each bad
    file named, and the notes say what else was left out."""
    _tree(tmp_path / "src")
    full = prepare_mimic_cxr(tmp_path / "src", tmp_path / "full", size=8)
    bad = [tmp_path / "src" / "files/p11/p11000003/s50000004/d7.jpg",  # in 2 pairs
           tmp_path / "src" / "files/p10/p10000001/s50000001/d2.jpg"]  # lateral, 1 pair
    bad[0].write_bytes(b"not a jpeg")
    bad[1].write_bytes(bad[1].read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match=r"cannot decode image .*; --skip-missing leaves "
                                        r"out the pairs whose JPEG is missing or does not"):
        prepare_mimic_cxr(tmp_path / "src", tmp_path / "out", size=8)
    assert not (tmp_path / "out").exists()
    notes: list[str] = []
    paths = prepare_mimic_cxr(tmp_path / "src", tmp_path / "out", size=8,
                              skip_missing=True, notes=notes)
    rows = {k: len(read_site_table(p)) for k, p in paths.items()}
    before = {k: len(read_site_table(p)) for k, p in full.items()}
    assert sum(before[k] - rows[k] for k in rows if k.startswith("frontal.")) == 2
    assert sum(before[k] - rows[k] for k in rows if k.startswith("lateral.")) == 1
    said = next(n for n in notes if "do not decode" in n)
    assert said.startswith("2 images do not decode; their rows are left out of that view")
    assert all(str(b) in said for b in bad)
    assert "1 of 24 studies have one view only: no pair, left out" in notes
    # every frontal image of the tree damaged: said, not a staging path's "no chunk"
    for jpg in (tmp_path / "src" / "files").rglob("*.jpg"):
        jpg.write_bytes(b"damaged")
    with pytest.raises(DataError, match=r"no frontal image of the train split decodes"):
        prepare_mimic_cxr(tmp_path / "src", tmp_path / "out2", size=8, skip_missing=True,
                          view="frontal")
    assert not (tmp_path / "out2").exists()


def test_one_view_needs_only_its_jpegs_and_names_samples_as_both_views_do(tmp_path):
    """A hospital with only the frontal images prepares the frontal site alone; its ids,
    splits and images equal those of a preparation that had both views."""
    _tree(tmp_path / "src")
    both = prepare_mimic_cxr(tmp_path / "src", tmp_path / "both", size=8)
    lateral = {dicom for studies in mimic_studies().values() for images in studies.values()
               for dicom, view in images if view in ("LATERAL", "LL")}
    for jpg in (tmp_path / "src" / "files").rglob("*.jpg"):
        if jpg.stem in lateral:
            jpg.unlink()  # the lateral views live at the other hospital
    own = prepare_mimic_cxr(tmp_path / "src", tmp_path / "a", size=8, view="frontal")
    assert set(own) == {"frontal.train", "frontal.val", "frontal.test"}
    assert not (tmp_path / "a" / "lateral").exists()
    for key, path in own.items():
        got, want = read_site_table(path), read_site_table(both[key])
        assert got.sample_ids == want.sample_ids
        np.testing.assert_array_equal(got.tensors["frontal"], want.tensors["frontal"])
    with pytest.raises(DataError, match="image file not found"):
        prepare_mimic_cxr(tmp_path / "src", tmp_path / "b", size=8, view="lateral")
    with pytest.raises(DataError, match=r"no lateral JPEG of any pair was found"):
        prepare_mimic_cxr(tmp_path / "src", tmp_path / "b", size=8, view="lateral",
                          skip_missing=True)
    assert not (tmp_path / "b").exists()


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


# ------------------------------------------------------------------ streaming
EXTRA, SIZE, GROUP = 55, 64, 8  # 60 pairs; 47 of them in train


def _one_shot(src, site: str, split: str, seed: int = 0):
    """The split's arrays built in memory, as the one-shot preparer built them: the
    golden for the streamed files (pairs, order, images, labels, columns)."""
    studies = mimic_studies(EXTRA)
    split_of = patient_split(list(studies), seed)
    rows = []
    for subj, st in studies.items():
        for study, images in st.items():
            fr = sorted(d for d, v in images if v in ("AP", "PA"))
            la = sorted(d for d, v in images if v in ("LATERAL", "LL"))
            rows += [(int(study), f, lat, subj, study) for f in fr for lat in la
                     if split_of[subj] == split]
    rows.sort()
    ids = [f"{study}_{f}_{lat}" for _, f, lat, _, study in rows]
    x = np.stack([load_image(src / "files" / f"p{subj[:2]}" / f"p{subj}" / f"s{study}"
                             / f"{f if site == 'frontal' else lat}.jpg", "L", SIZE)
                  for _, f, lat, subj, study in rows])
    fixed = ([1, 0, 0, 0] * 4)[:14]
    y = np.array([[-1] * 14 if r[4] == "50000004" else fixed for r in rows])
    labels = {label_column(c): y[:, j] for j, c in enumerate(CHEXPERT)}
    cols = {"subject_id": np.array([int(r[3]) for r in rows]),
            "study_id": np.array([r[0] for r in rows])}
    return ids, {site: x}, labels, cols


def test_streamed_files_equal_the_one_shot_arrays(tmp_path):
    _tree(tmp_path / "src", extra=EXTRA)
    paths = prepare_mimic_cxr(tmp_path / "src", tmp_path / "out", size=SIZE,
                              row_group_size=GROUP)
    for key, p in paths.items():
        site, split = key.split(".")
        ids, x, labels, cols = _one_shot(tmp_path / "src", site, split)
        t = read_site_table(p)
        assert t.sample_ids == ids
        np.testing.assert_array_equal(t.tensors[site], x[site])
        for k in labels:
            np.testing.assert_array_equal(t.labels[k], labels[k])
        for k in cols:
            np.testing.assert_array_equal(t.columns[k], cols[k])
        # the one-shot preparer passed these arrays to write_site_table: same bytes
        golden = write_site_table(tmp_path / "golden" / f"{key}.parquet", ids, x,
                                  labels, t.dataset_meta, columns=cols,
                                  row_group_size=GROUP)
        assert golden.read_bytes() == p.read_bytes()
        assert read_site_meta(p)["num_row_groups"] == -(-len(ids) // GROUP)
    assert len(read_site_table(paths["frontal.train"])) == 47


def test_holds_one_row_group_of_images_not_a_split(tmp_path, monkeypatch):
    """Images are decoded only as the writer asks for a chunk of ``GROUP`` rows, each
    once; traced memory grows with the image size by far less than one split."""
    _tree(tmp_path / "src", extra=EXTRA)
    decoded, chunks = record_chunks(monkeypatch, mc)
    prepare_mimic_cxr(tmp_path / "src", tmp_path / "out", size=SIZE,
                      row_group_size=GROUP)
    assert max(rows for rows, _ in chunks) == GROUP
    assert all(images <= rows for rows, images in chunks)  # no read-ahead
    assert sum(rows for rows, _ in chunks) == 2 * 60
    assert len(decoded) == len(set(decoded)) == 8 + 2 * EXTRA  # each image once

    # measured in a process of its own: tracemalloc's peak counts whatever else the
    # process allocates meanwhile (other threads: a full CI run once read 7.7 MB here
    # in a test worker, against a few KB alone)
    script = f"""
import tracemalloc
from mmvm.data.prepare.mimic_cxr import prepare_mimic_cxr

def peak(size, out):
    tracemalloc.start()
    try:
        prepare_mimic_cxr({str(tmp_path / "src")!r} , {str(tmp_path)!r} + "/" + out,
                          size=size, row_group_size={GROUP})
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

prepare_mimic_cxr({str(tmp_path / "src")!r}, {str(tmp_path / "warm")!r}, size=8)
print(peak({SIZE}, "big") - peak(8, "small"))  # what the images themselves cost
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    images = int(res.stdout.split()[-1])
    split = 47 * SIZE * SIZE  # one site's train split of uint8 [1, 64, 64] images
    # the one-shot preparer held both sites' train splits (~2 x split); streaming
    # holds about two row groups (the chunk and its stacked copy)
    assert images < split / 2, (images, split)


def test_a_third_site_takes_the_x_ray_sites_split(tmp_path, capsys):
    """A hospital's lab values beside the two X-ray sites: MIMIC-CXR splits 80/10/10
    by patient, the table preparer by a hash of the id, so no --seed made them agree
    and the leak check's advice could not be followed. --split-from takes each shared
    sample's side from the X-ray site's files; samples it lacks split as before."""
    from mmvm.cli import main
    from mmvm.data.coupling import split_leak

    _tree(tmp_path / "src")
    paths = prepare_mimic_cxr(tmp_path / "src", tmp_path / "xray", size=8, seed=3)
    sides = {sid: split for split in ("train", "val", "test")
             for sid in read_site_table(paths[f"frontal.{split}"]).sample_ids}
    extra = [f"lab-only-{i}" for i in range(40)]
    with open(tmp_path / "labs.csv", "w") as fh:
        fh.write("sample_id,sodium,potassium\n")
        for i, sid in enumerate([*sides, *extra]):
            fh.write(f"{sid},{135 + i % 7},{4 + i % 3}\n")
    argv = ["data", "prepare", "table", "--modality", f"labs={tmp_path / 'labs.csv'}",
            "--id-column", "sample_id", "--out", str(tmp_path / "labs"), "--quiet",
            "--split-from", str(tmp_path / "xray" / "frontal")]
    assert main(argv) == 0
    assert f"split as the split of {tmp_path / 'xray' / 'frontal'} ({len(sides)} of " \
        f"{len(sides) + len(extra)} samples; the others by sample id)" in capsys.readouterr().out
    train = set(read_site_table(tmp_path / "labs" / "train.parquet").sample_ids)
    test = set(read_site_table(tmp_path / "labs" / "test.parquet").sample_ids)
    assert {s for s in sides if sides[s] == "train"} <= train
    assert {s for s in sides if sides[s] != "train"} <= test  # val and test: held out
    assert train & set(extra) and test & set(extra)  # the rest by the hash split
    frontal = tmp_path / "xray" / "frontal"
    assert split_leak([frontal / "train.parquet", tmp_path / "labs" / "train.parquet"],
                      [frontal / "test.parquet", tmp_path / "labs" / "test.parquet"]) is None
    with pytest.raises(DataError, match="none of its .* sample ids is among these"):
        from mmvm.data.coupling import split_like

        split_like(["x", "y"], frontal, np.zeros(2, bool))


def test_an_image_listed_twice_in_the_metadata_is_named_by_line(tmp_path):
    """It was reported as a duplicate sample id in the preparer's staging folder."""
    _tree(tmp_path / "src")
    meta = tmp_path / "src" / "mimic-cxr-2.0.0-metadata.csv"
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(DataError, match=rf"{meta}: dicom_id '\w+' is listed on lines 2 "
                                        rf"and {len(lines) + 1}; one line per image"):
        prepare_mimic_cxr(tmp_path / "src", tmp_path / "out", size=8)
    assert not (tmp_path / "out").exists()


def test_a_csv_that_is_not_utf8_is_named(tmp_path):
    _tree(tmp_path / "src")
    labels = tmp_path / "src" / "mimic-cxr-2.0.0-chexpert.csv"
    labels.write_bytes(labels.read_bytes() + b"\xff\xfe,1\n")
    with pytest.raises(DataError, match=rf"{labels}: not UTF-8 text"):
        prepare_mimic_cxr(tmp_path / "src", tmp_path / "out", size=8)
