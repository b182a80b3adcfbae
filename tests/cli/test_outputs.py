"""Output paths: every command refuses a bad --out before any work, on one line with
exit status 2, and the file it would have replaced keeps its bytes (mmvm.cli.outputs,
and its use by plot, report, encode and data make/prepare/split/check)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mmvm.cli import main
from mmvm.cli.outputs import check_file_out, check_folder_out, positive_int

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "polymnist_cpu.toml")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Tiny PolyMNIST from `mmvm data make`, a run trained 1 epoch on it, and the
    run's latents of the test file (`mmvm encode`)."""
    root = tmp_path_factory.mktemp("outputs")
    data = root / "pm"
    assert main(["data", "make", "polymnist", "--digits-source", "sklearn", "--n-train",
                 "64", "--n-test", "32", "--out", str(data), "--quiet"]) == 0
    run = root / "run"
    sets = [f'data.root="{data}"', f'train.out_dir="{run}"', "train.epochs=1",
            "train.batch_size=64", 'train.device="cpu"', "model.latent_dim=4",
            *(f"model.modalities.m{i}.width=4" for i in range(3))]
    assert main(["train", "--config", CONFIG, "--no-progress",
                 *[a for s in sets for a in ("--set", s)]]) == 0
    (run / "eval.json").write_text(json.dumps({"method": "mmvm", "beta": 1.0}))
    latents = root / "lat.parquet"
    assert main(["encode", "--run", str(run), str(data / "test.parquet"), "--out",
                 str(latents), "--no-progress"]) == 0
    afile = root / "afile"
    afile.write_text("a file, not a folder")
    return {"data": data, "run": run, "latents": latents, "afile": afile}


def _refused(argv: list[str], capsys, said: str, *kept: Path) -> str:
    """Run ``argv``: exit 2, one error line holding ``said``, ``kept`` unchanged."""
    before = {p: p.read_bytes() for p in kept}
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: --out " in err, err
    assert said in err, err
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in kept} == before
    return err


# ------------------------------------------------------------------ the checks alone
def test_positive_int_takes_counts_of_at_least_one():
    assert positive_int("3") == 3
    for bad, said in (("0", "0: must be at least 1"), ("-1", "-1: must be at least 1"),
                      ("x", "'x' is not an integer")):
        with pytest.raises(argparse.ArgumentTypeError, match=said):
            positive_int(bad)


def test_file_checks_name_the_path_and_the_fix(tmp_path):
    (tmp_path / "f").write_text("x")
    cases = [(tmp_path / "f" / "x.png", f"{tmp_path / 'f'} is not a folder (a file)"),
             (tmp_path, "is a folder; give a file name inside it"),
             (tmp_path / "x.pdf", "mmvm plot writes PNG images; give a name ending in "
                                  ".png"),
             (tmp_path / "f", "exists and is no .png file (left as it is)")]
    for out, said in cases:
        with pytest.raises(ValueError, match=said.replace("(", r"\(").replace(")", r"\)")):
            check_file_out(out, (".png",), "PNG images", writer="mmvm plot")
    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "f")  # the same file under another name is an input
    with pytest.raises(ValueError, match="is one of the input files"):
        check_file_out(link, (".png",), "PNG images", [tmp_path / "f"])
    assert check_file_out(tmp_path / "new" / "x.PNG", (".png",), "PNG") \
        == tmp_path / "new" / "x.PNG"
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_folder_out(tmp_path / "f")
    assert check_folder_out(tmp_path / "new") == tmp_path / "new"


# ------------------------------------------------------------------ plot
def test_plot_refuses_its_inputs_other_kinds_and_bad_places(made, tmp_path, capsys):
    run, lat, afile = made["run"], made["latents"], made["afile"]
    checkpoint = tmp_path / "some.pt"
    shutil.copy(run / "checkpoint.pt", checkpoint)
    cases = [
        (["curves", str(run), "--out", str(run / "metrics.csv")],
         "is one of the input files", run / "metrics.csv"),
        (["scatter", str(run), "--out", str(run / "eval.json")],
         "is one of the input files", run / "eval.json"),
        (["latents", str(lat), "--out", str(lat)], "is one of the input files", lat),
        (["curves", str(run / "metrics.csv"), "--out", str(checkpoint)],
         "exists and is no .png file (left as it is)", checkpoint),
        (["curves", str(run), "--out", str(run / "config.json")],
         "exists and is no .png file", run / "config.json"),
        (["curves", str(run), "--out", str(afile / "x.png")],
         f"{afile} is not a folder", afile),
        (["scatter", str(run), "--out", str(tmp_path)], "is a folder", lat),
    ]
    for argv, said, kept in cases:
        _refused(["plot", *argv], capsys, said, kept, run / "metrics.csv")
    # a suffix the PNG writer cannot honour is refused, not written as PNG bytes
    _refused(["plot", "curves", str(run), "--out", str(tmp_path / "x.pdf")], capsys,
             "mmvm plot writes PNG images; give a name ending in .png")
    assert not (tmp_path / "x.pdf").exists()


def test_plot_never_writes_over_an_image_it_did_not_make(made, tmp_path, capsys):
    """A PNG that matplotlib did not write (here a user's scan, written by Pillow) is
    refused, unchanged; the same name is free once the user removes it."""
    from PIL import Image

    scan = tmp_path / "xray-0001.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(scan)
    _refused(["plot", "latents", str(made["latents"]), "--out", str(scan)], capsys,
             f"--out {scan}: exists and was not written by mmvm plot (left as it is)", scan)
    scan.unlink()
    assert main(["plot", "latents", str(made["latents"]), "--out", str(scan)]) == 0


def test_plot_defaults_and_reruns_write_over_their_own_png(made, tmp_path):
    run = shutil.copytree(made["run"], tmp_path / "run")
    metrics = (run / "metrics.csv").read_bytes()
    for _ in range(2):  # the default <run>/curves.png, inside the input folder
        assert main(["plot", "curves", str(run)]) == 0
        assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "metrics.csv").read_bytes() == metrics
    lat = shutil.copy(made["latents"], tmp_path / "lat.parquet")
    for _ in range(2):
        assert main(["plot", "latents", str(lat)]) == 0
    assert (tmp_path / "lat.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ report
def test_report_refuses_json_inputs_folders_and_bad_places(made, tmp_path, capsys):
    run, afile = made["run"], made["afile"]
    (tmp_path / "r_files").write_text("not the figures' folder")
    cases = [
        (["--out", str(run / "eval.json")], "is one of the input files", run / "eval.json"),
        (["--format", "md", "--out", str(run / "config.json")],
         "is one of the input files", run / "config.json"),
        (["--out", str(tmp_path)], "is a folder; give a file name inside it", afile),
        (["--out", str(afile / "x.html")], f"{afile} is not a folder", afile),
        (["--out", str(afile)], "exists and is no .html or .htm file", afile),
        (["--format", "md", "--out", str(tmp_path / "r.html")],
         "mmvm report writes a Markdown page; give a name ending in .md", afile),
        (["--out", str(tmp_path / "r.md")], "its figures go to", tmp_path / "r_files"),
    ]
    for argv, said, kept in cases:
        _refused(["report", str(run), *argv], capsys, said, kept, run / "eval.json")
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "r.md").exists()


def test_report_writes_over_its_own_earlier_report(made, tmp_path):
    out = tmp_path / "report.html"
    for _ in range(2):
        assert main(["report", str(made["run"]), "--out", str(out)]) == 0
    assert out.read_text().lstrip().lower().startswith("<!doctype html")


# ------------------------------------------------------------------ encode
def _encode(made, out, *extra) -> list[str]:
    return ["encode", "--run", str(made["run"]), str(made["data"] / "test.parquet"),
            "--out", str(out), "--no-progress", *extra]


def test_encode_never_replaces_a_site_file_or_a_foreign_one(made, tmp_path, capsys):
    copy = shutil.copytree(made["data"], tmp_path / "pmcopy")
    notes = tmp_path / "notes.parquet"
    notes.write_text("my notes")
    plain = tmp_path / "plain.parquet"
    pq.write_table(pq.read_table(made["latents"]).replace_schema_metadata({}), plain)
    cases = [
        (copy / "train.parquet", "is a site data file (its schema has mmvm.tensor.* "
                                 "keys); write the latents elsewhere"),
        (notes, "exists and is not an earlier mmvm encode output"),
        (plain, "exists and is not an earlier mmvm encode output (no mmvm.latents "
                "metadata)"),
        (made["data"] / "test.parquet", "is one of the input files"),
    ]
    for out, said in cases:
        _refused(_encode(made, out), capsys, said, out)
    _refused(_encode(made, copy), capsys, "is a folder; give a file name inside it",
             copy / "test.parquet")
    _refused(_encode(made, made["afile"] / "x.parquet"), capsys,
             f"{made['afile']} is not a folder", made["afile"])


def test_encode_writes_over_its_own_earlier_output(made, tmp_path):
    out = shutil.copy(made["latents"], tmp_path / "lat.parquet")
    assert main(_encode(made, out)) == 0
    assert pq.read_table(out).equals(pq.read_table(made["latents"]))


@pytest.mark.parametrize("size", ["0", "-1"])
def test_encode_batch_size_below_one_is_an_argument_error(made, tmp_path, capsys, size):
    out = shutil.copy(made["latents"], tmp_path / "lat.parquet")
    before = out.read_bytes()
    with pytest.raises(SystemExit) as done:
        main(_encode(made, out, "--batch-size", size))
    assert done.value.code == 2
    assert f"argument --batch-size: {size}: must be at least 1" in capsys.readouterr().err
    assert out.read_bytes() == before


# ------------------------------------------------------------------ data
def _arrays(tmp_path) -> tuple[Path, Path]:
    """Real site files from `data prepare arrays` and the array they came from."""
    arr = tmp_path / "a10.npy"
    np.save(arr, np.random.default_rng(0).random((10, 4)).astype(np.float32))
    real = tmp_path / "real"
    assert main(["data", "prepare", "arrays", "--modality", f"x={arr}", "--out",
                 str(real), "--quiet"]) == 0
    return arr, real


@pytest.mark.parametrize("make", [
    ["hippocampus", "--trials-per-odor", "2"],
    ["polymnist", "--digits-source", "sklearn", "--n-train", "4", "--n-test", "4"]])
def test_data_make_keeps_site_files_unless_forced(tmp_path, capsys, make):
    _, real = _arrays(tmp_path)
    kept = [real / "train.parquet", real / "test.parquet"]
    argv = ["data", "make", *make, "--out", str(real), "--quiet"]
    _refused(argv, capsys, f"--out {real}: already holds data files (test.parquet, "
             "train.parquet); give another output folder, or --force", *kept)
    assert main([*argv, "--force"]) == 0
    assert pq.read_schema(kept[0]).names != ["sample_id", "x"]  # replaced, as asked


def test_data_make_raw_keeps_a_raw_layout_unless_forced(tmp_path, capsys):
    argv = ["data", "make", "hippocampus", "--raw", "--trials-per-odor", "2", "--out",
            str(tmp_path / "raw")]
    assert main(argv) == 0
    kept = sorted((tmp_path / "raw").glob("*/*.npy"))
    _refused(argv, capsys, "barat/barat_spike_data_binned.npy", *kept)
    assert main([*argv, "--force"]) == 0


def test_data_outputs_under_or_at_a_file_are_refused_first(tmp_path, capsys):
    arr, _ = _arrays(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("x")
    prepare = ["data", "prepare", "arrays", "--modality", f"x={arr}", "--quiet", "--out"]
    make = ["data", "make", "polymnist", "--digits-source", "sklearn", "--n-train", "4",
            "--n-test", "4", "--quiet", "--out"]
    split = ["data", "split", str(tmp_path / "real" / "train.parquet"), "--out"]
    for argv in (prepare, make, split):
        _refused([*argv, str(afile)], capsys, f"--out {afile}: is a file, not a folder",
                 afile, arr)
        _refused([*argv, str(afile / "x")], capsys, f"{afile} is not a folder", afile)
    _refused([*prepare, str(arr)], capsys, f"--out {arr}: is a file, not a folder", arr)
    _refused(["data", "make", "mimic_cxr", "--out", str(afile / "x")], capsys,
             f"{afile} is not a folder", afile)


def test_data_split_keeps_an_earlier_layout_unless_forced(tmp_path, capsys):
    pm, hc, sp = tmp_path / "pm", tmp_path / "hc", tmp_path / "sp"
    assert main(["data", "make", "polymnist", "--digits-source", "sklearn", "--n-train",
                 "8", "--n-test", "4", "--out", str(pm), "--quiet"]) == 0
    assert main(["data", "make", "hippocampus", "--trials-per-odor", "2", "--out",
                 str(hc), "--quiet"]) == 0
    pm_files = [str(pm / "train.parquet"), str(pm / "test.parquet")]
    hc_files = [str(hc / "train.parquet"), str(hc / "test.parquet")]
    assert main(["data", "split", *pm_files, "--out", str(sp)]) == 0
    old = sorted(sp.glob("*/*.parquet")) + [sp / "sites.json"]
    _refused(["data", "split", *hc_files, "--out", str(sp)], capsys,
             f"--out {sp}: already holds a site layout (sites.json); give another "
             "output folder, or --force", *old)
    assert sorted(p.name for p in sp.iterdir()) == ["site-m0", "site-m1", "site-m2",
                                                    "sites.json"]
    capsys.readouterr()
    assert main(["data", "split", *hc_files, "--out", str(sp), "--force"]) == 0
    out = capsys.readouterr().out
    assert f"note: removed {sp / 'site-m0'}/, a site of the replaced layout" in out
    listed = set(json.loads((sp / "sites.json").read_text())["files"])
    assert sorted(p.name for p in sp.iterdir() if p.is_dir()) == sorted(listed)
    # an input inside the folder a split would write is refused, even with --force
    site = sp / "site-rat1" / "train.parquet"
    _refused(["data", "split", str(site), "--out", str(sp), "--force", "--layout",
              "horizontal", "--names", "site-rat1,b"], capsys,
             f"the split writes {site}, which is one of the input files", site)


def test_data_check_of_a_folder_checks_its_files_or_suggests_them(made, capsys,
                                                                  tmp_path):
    """A site folder stands for its train.parquet and test.parquet (as data config and
    site-dirs take it); a folder without them gets the suggestion."""
    assert main(["data", "check", str(made["data"])]) == 0
    out = capsys.readouterr().out
    assert "train.parquet" in out and "test.parquet" in out
    (tmp_path / "other").mkdir()
    assert main(["data", "check", str(tmp_path / "other")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'other'}: is a folder; give its site files, e.g. " \
           f"{tmp_path / 'other' / '*.parquet'}" in err


def test_split_force_removes_only_listed_files_inside_out_and_says_so(tmp_path):
    """remove_stale: a listed .parquet of an old site is removed and named; a user's own
    file keeps its folder; an input is never removed; a site folder that is a link
    (its files may be data elsewhere) is left whole."""
    from mmvm.cli.data_common import remove_stale

    out, outside = tmp_path / "sp", tmp_path / "elsewhere"
    for site in ("a", "b", "c"):
        (out / site).mkdir(parents=True)
        for f in ("train.parquet", "test.parquet"):
            (out / site / f).write_bytes(b"old " + site.encode())
    (out / "a" / "README.txt").write_text("the user's")
    outside.mkdir()
    (outside / "train.parquet").write_bytes(b"elsewhere")
    (out / "d").symlink_to(outside, target_is_directory=True)
    old = {s: ["train.parquet", "test.parquet"] for s in ("a", "b", "c", "d")}
    notes = remove_stale(out, old, {"c": {"train": str(out / "c" / "train.parquet")}},
                         inputs=[str(out / "b" / "test.parquet")])
    assert sorted(p.name for p in (out / "a").iterdir()) == ["README.txt"]
    assert f"removed train.parquet, test.parquet from {out / 'a'}/ (the replaced " \
           "layout's, which the new one does not write)" in notes
    assert f"left {out / 'a'}/, a site of the replaced layout: it holds files that " \
           "layout did not write" in notes
    assert sorted(p.name for p in (out / "b").iterdir()) == ["test.parquet"]  # an input
    assert sorted(p.name for p in (out / "c").iterdir()) == ["train.parquet"]
    assert (outside / "train.parquet").read_bytes() == b"elsewhere"
    assert f"left {out / 'd'}/, a site of the replaced layout: it is a link or leads " \
           "out of the output folder" in notes
