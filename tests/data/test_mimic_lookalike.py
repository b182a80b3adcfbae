"""mmvm data make mimic_cxr: a tree the MIMIC-CXR preparer reads, both views aligned."""

from __future__ import annotations

from mmvm.cli import main
from mmvm.data.store import read_site_table


def test_the_lookalike_tree_prepares_into_two_aligned_views(tmp_path, capsys):
    tree = tmp_path / "mimic"
    assert main(["data", "make", "mimic_cxr", "--out", str(tree), "--patients", "12",
                 "--size", "48x40"]) == 0
    assert "next: mmvm data prepare mimic_cxr" in capsys.readouterr().out
    ids = {}
    for view in ("frontal", "lateral"):
        out = tmp_path / view
        assert main(["data", "prepare", "mimic_cxr", str(tree), "--out", str(out),
                     "--view", view, "--size", "64", "--quiet"]) == 0
        ids[view] = {split: read_site_table(out / view / f"{split}.parquet").sample_ids
                     for split in ("train", "val", "test")}
        said = capsys.readouterr().out  # rows per file, and what was left out
        assert f"{out / view / 'train.parquet'} ({len(ids[view]['train'])} rows)" in said
        assert "note: 1 of 16 studies have one view only: no pair, left out" in said
    assert ids["frontal"] == ids["lateral"]  # what the two hospitals align on
    assert all(len(v) > 0 for v in ids["frontal"].values())
    # a second make into the same folder is refused and leaves it as it was
    before = sorted(p.relative_to(tree) for p in tree.rglob("*"))
    assert main(["data", "make", "mimic_cxr", "--out", str(tree)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert sorted(p.relative_to(tree) for p in tree.rglob("*")) == before


def test_prepare_keeps_a_views_site_files_unless_forced(tmp_path, capsys):
    """A second prepare into the same --out: the view it would write over is refused
    (its files unchanged) unless --force; the other view's folder is free to write."""
    tree = tmp_path / "mimic"
    assert main(["data", "make", "mimic_cxr", "--out", str(tree), "--patients", "10",
                 "--size", "48x40"]) == 0
    out = tmp_path / "sites"
    prep = ["data", "prepare", "mimic_cxr", str(tree), "--out", str(out), "--size", "32",
            "--quiet", "--view"]
    assert main([*prep, "frontal"]) == 0
    before = {p: p.read_bytes() for p in (out / "frontal").iterdir()}
    assert "note: --size 32: the shipped network for these images (res_image, " \
           "configs/mimic_cxr*.toml) takes 64 or 224 px" in capsys.readouterr().out
    assert main([*prep, "frontal"]) == 2
    assert capsys.readouterr().err.startswith(
        f"mmvm data prepare mimic_cxr: error: --out {out}: already holds site files "
        "(frontal/")
    assert {p: p.read_bytes() for p in (out / "frontal").iterdir()} == before
    assert main([*prep, "lateral"]) == 0  # the other view: nothing of it there yet
    assert main([*prep, "frontal", "--force"]) == 0
    assert main([*prep[:-1]]) == 2  # both views: both are there now
