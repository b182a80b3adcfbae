"""Bad input found by a review that tried ~500 of them on the CLI: each is refused in
one line that names the file and what to do, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmvm.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _refused(capsys, argv, said, out=None):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and err.count("\n") == 1, err
    assert out is None or not Path(out).exists()


def test_a_table_that_names_a_column_twice(tmp_path, capsys):
    """pyarrow raised a KeyError (a traceback) for a CSV, dumped its schema for
    Parquet."""
    (tmp_path / "t.csv").write_text("sid,y,f1,f1\na,0,1,2\nb,1,3,4\n")
    _refused(capsys, ["data", "prepare", "table", "--modality", f"x={tmp_path / 't.csv'}",
                      "--id-column", "sid", "--out", str(tmp_path / "o"), "--quiet"],
             "column name 'f1' appears 2 times (columns 3, 4); rename all but one",
             tmp_path / "o")


def test_a_continuous_label_is_not_a_class_per_value(tmp_path, capsys):
    rows = "\n".join(f"s{i},{np.sin(i):.5f},{i % 3}" for i in range(30))
    (tmp_path / "t.csv").write_text(f"sid,y,f\n{rows}\n")
    _refused(capsys, ["data", "prepare", "table", "--modality", f"x={tmp_path / 't.csv'}",
                      "--id-column", "sid", "--label", "y", "--out", str(tmp_path / "o"),
                      "--quiet"], "are numbers that are not whole: a continuous value",
             tmp_path / "o")


def test_look_alikes_that_would_be_no_data(tmp_path, capsys):
    # 100000 x 100000 asked numpy for 149 GiB, a traceback
    _refused(capsys, ["data", "make", "mimic_cxr", "--out", str(tmp_path / "m"),
                      "--patients", "10", "--size", "100000x100000"],
             "images of 16 to 4096 pixels a side", tmp_path / "m")
    # a test file of no rows, which every reader then refused
    _refused(capsys, ["data", "make", "hippocampus", "--out", str(tmp_path / "h"),
                      "--test-fraction", "0", "--trials-per-odor", "2", "--quiet"],
             "the test split is empty: test_fraction 0", tmp_path / "h")


def test_a_base_configs_errors_name_the_base(tmp_path, capsys, tiny_polymnist):
    """The draft's path was named for a typo in --base, and no file for bad TOML."""
    from mmvm.data.sites import site_layout, split_sites

    split_sites([tiny_polymnist / "train.parquet", tiny_polymnist / "test.parquet"],
                tmp_path / "sites", site_layout("vertical", ["m0", "m1", "m2"]))
    base = tmp_path / "base.toml"
    text = (ROOT / "configs" / "polymnist_cpu.toml").read_text()
    for content, said in ((text.replace("latent_dim", "latnet_dim"),
                           f"{base}: unknown key 'model.latnet_dim'"),
                          ("[model\n", f"--base {base}: not a TOML config")):
        base.write_text(content)
        _refused(capsys, ["data", "config", str(tmp_path / "sites" / "site-m0"), "--out",
                          str(tmp_path / "d.toml"), "--base", str(base)], said,
                 tmp_path / "d.toml")


def test_a_mistyped_data_file_is_not_sent_to_make_data_again(tmp_path, capsys,
                                                              tiny_polymnist):
    config = ROOT / "configs" / "polymnist_cpu.toml"
    _refused(capsys, ["train", "--config", str(config), "--set",
                      f'data.root="{tiny_polymnist}"', "--set", "data.train=nope.parquet",
                      "--set", f'train.out_dir="{tmp_path / "run"}"'],
             f"{tiny_polymnist} holds test.parquet, train.parquet: check data.train",
             tmp_path / "run")


def test_a_folder_for_a_file_is_named_as_such(tmp_path, capsys):
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "lab.toml").write_text("")
    _refused(capsys, ["train", "--config", str(tmp_path / "cfgs")],
             f"config file {tmp_path / 'cfgs'} is a folder; give a .toml file (it holds "
             f"lab.toml)")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    _refused(capsys, ["evaluate", "--run", str(tmp_path / "run" / "checkpoint.pt")],
             f"is a file; --run takes the run folder ({tmp_path / 'run'})")
    _refused(capsys, ["evaluate", "--run", str(tmp_path / "nope")],  # not "no checkpoint"
             f"--run {tmp_path / 'nope'}: no such folder")
    _refused(capsys, ["encode", "--run", str(tmp_path / "nope"), "--out",
                      str(tmp_path / "z.parquet"), str(tmp_path / "t.parquet")],
             f"--run {tmp_path / 'nope'}: no such folder")


def test_damaged_outputs_are_named_not_read_as_empty(tmp_path, capsys):
    """An eval.json of strings was reported as "no run here has an eval.json yet",
    exit 0; a truncated latents file and a public-key record said nothing of the file."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").write_text('{"method": "mmvm", "probe": {"mean": "oops"}, '
                                   '"reconstruction": {"total": "oops"}}')
    _refused(capsys, ["report", str(run), "--out", str(tmp_path / "r.html")],
             f"{run / 'eval.json'}: no number where mmvm evaluate writes one",
             tmp_path / "r.html")
    (tmp_path / "lat.parquet").write_bytes(b"PAR1 not really")
    for command in ("latents", "across"):
        _refused(capsys, ["plot", command, str(tmp_path / "lat.parquet"), "--out",
                          str(tmp_path / "p.png")],
                 f"{tmp_path / 'lat.parquet'}: not a readable Parquet file")
    (tmp_path / "pub.json").write_text("{\n")
    _refused(capsys, ["site", "keys", "--out", str(tmp_path / "k"), "--directory",
                      str(tmp_path / "pub.json")], f"--directory {tmp_path / 'pub.json'}: ",
             tmp_path / "k")


@pytest.mark.parametrize("argv, said", [
    (["data", "prepare", "images", "--modality", "a=x", "--size", "8", "--out", "o",
      "--white-level", "-5"], "the white level is a pixel value above 0"),
    (["plot", "scatter", "r.csv", "--chance", "1.5"], "a chance level is a fraction"),
    (["plot", "scatter", "r.csv", "--chance", "nan"], "a chance level is a fraction"),
])
def test_values_out_of_range_are_refused_by_the_flag(capsys, argv, said):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and said in capsys.readouterr().err


def test_an_image_tables_label_error_names_the_table(tmp_path, capsys):
    """It named the preparer's temporary /tmp/mmvm-images-*/label.dx.npy."""
    from PIL import Image

    (tmp_path / "a").mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "a" / f"s{i}.png")
    rows = "\n".join(f"s{i},{v}" for i, v in enumerate(["1", "x", "2", "y", "1", "x"]))
    (tmp_path / "t.csv").write_text(f"sample_id,dx\n{rows}\n")
    _refused(capsys, ["data", "prepare", "images", "--modality", f"a={tmp_path / 'a'}",
                      "--size", "28", "--table", str(tmp_path / "t.csv"), "--out",
                      str(tmp_path / "o"), "--quiet"],
             f"{tmp_path / 't.csv'} column 'dx': row ", tmp_path / "o")


def test_a_site_folder_twice_and_a_group_column_without_table(tmp_path, capsys,
                                                               tiny_polymnist):
    from mmvm.data.sites import site_layout, split_sites

    split_sites([tiny_polymnist / "train.parquet", tiny_polymnist / "test.parquet"],
                tmp_path / "sites", site_layout("vertical", ["m0", "m1", "m2"]))
    site = str(tmp_path / "sites" / "site-m0")
    _refused(capsys, ["data", "config", site, site, "--out", str(tmp_path / "d.toml")],
             "site-m0 is given twice; give each site folder once", tmp_path / "d.toml")
    _refused(capsys, ["data", "prepare", "images", "--modality", f"a={tmp_path}", "--size",
                      "28", "--group-column", "patient", "--out", str(tmp_path / "o")],
             "--group-column names columns of --table, which is missing", tmp_path / "o")


def test_a_table_of_only_a_header(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("sid,f1,f2\n")
    _refused(capsys, ["data", "prepare", "table", "--modality", f"x={tmp_path / 't.csv'}",
                      "--id-column", "sid", "--out", str(tmp_path / "o"), "--quiet"],
             "t.csv: no rows below its header", tmp_path / "o")
