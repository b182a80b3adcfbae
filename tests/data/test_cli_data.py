"""``mmvm data``: make, prepare, check from the command line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmvm.cli import main
from mmvm.data.prepare import PREPARERS
from mmvm.data.store import read_site_table


def test_make_hippocampus_and_check(tmp_path, capsys):
    out = tmp_path / "hc"
    assert main(["data", "make", "hippocampus", "--out", str(out), "--seed", "1",
                 "--trials-per-odor", "2", "--quiet"]) == 0
    t = read_site_table(out / "train.parquet")
    assert t.modalities == ["rat1", "rat2", "rat3", "rat4", "rat5"]
    capsys.readouterr()
    assert main(["data", "check", str(out / "train.parquet"),
                 str(out / "test.parquet")]) == 0
    text = capsys.readouterr().out
    assert "ok" in text and str(len(t)) in text
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"garbage")
    assert main(["data", "check", str(out / "train.parquet"), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.parquet: not a Parquet file" in err


def test_check_shows_long_file_names_whole(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # a narrow terminal
    out = tmp_path / "a_site_folder_with_a_rather_long_name" / "hippocampus_prepared"
    assert main(["data", "make", "hippocampus", "--out", str(out), "--trials-per-odor",
                 "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["data", "check", str(out / "train.parquet")]) == 0
    lines = capsys.readouterr().out.splitlines()
    cells = "".join(line.split("│")[1].strip() for line in lines if line.count("│") > 2)
    assert str(out / "train.parquet") in cells  # not cut with "…"
    # and in a pipe or a log (as here), where rich assumes 80 columns, not folded
    assert any(str(out / "train.parquet") in line for line in lines), lines


def test_make_hippocampus_raw_then_prepare(tmp_path):
    raw = tmp_path / "raw"
    assert main(["data", "make", "hippocampus", "--raw", "--out", str(raw),
                 "--trials-per-odor", "2"]) == 0
    assert (raw / "barat" / "barat_trial_info.npy").is_file()
    assert main(["data", "prepare", "hippocampus", str(raw), "--out",
                 str(tmp_path / "out"), "--quiet"]) == 0
    assert (tmp_path / "out" / "test.parquet").is_file()


@pytest.mark.parametrize("name", PREPARERS)
def test_prepare_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "prepare", name, "--help"])
    assert e.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_prepare_polymnist_png_cli_and_error_status(tmp_path, capsys):
    for split in ("train", "test"):
        for m in range(2):
            d = tmp_path / "src" / split / f"m{m}"
            d.mkdir(parents=True)
            Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(d / "0.4.png")
    assert main(["data", "prepare", "polymnist_png", str(tmp_path / "src"), "--out",
                 str(tmp_path / "out"), "--quiet"]) == 0
    assert read_site_table(tmp_path / "out" / "test.parquet").labels["label"].tolist() \
        == [4]
    (tmp_path / "src" / "test" / "m1" / "0.4.png").unlink()
    assert main(["data", "prepare", "polymnist_png", str(tmp_path / "src"), "--out",
                 str(tmp_path / "out2"), "--quiet"]) == 2
    assert "test/m1: no <index>.<digit>.png files" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_split_writes_one_folder_per_site_named_as_asked(tmp_path, capsys):
    """The deployment guide's test bed: one dataset, one folder per site (a, b, c),
    train and test split the same way; a vertical site holds one modality of every
    sample, a horizontal site every modality of its own samples."""
    src = tmp_path / "hc"
    assert main(["data", "make", "hippocampus", "--out", str(src), "--trials-per-odor",
                 "2", "--quiet"]) == 0
    whole = read_site_table(src / "train.parquet")
    files = [str(src / "train.parquet"), str(src / "test.parquet")]
    assert main(["data", "split", *files, "--out", str(tmp_path / "v"),
                 "--names", "a,b,c,d,e"]) == 0
    for k, name in enumerate("abcde"):
        t = read_site_table(tmp_path / "v" / name / "train.parquet")
        assert t.modalities == [whole.modalities[k]] and t.sample_ids == whole.sample_ids
        assert (tmp_path / "v" / name / "test.parquet").exists()
    assert main(["data", "split", *files, "--out", str(tmp_path / "h"),
                 "--layout", "horizontal", "--shards", "2"]) == 0
    parts = [read_site_table(tmp_path / "h" / f"site-{k}" / "train.parquet")
             for k in range(2)]
    assert all(p.modalities == whole.modalities for p in parts)
    assert sorted(parts[0].sample_ids + parts[1].sample_ids) == sorted(whole.sample_ids)
    capsys.readouterr()
    assert main(["data", "split", *files, "--out", str(tmp_path / "x"),
                 "--names", "a,b"]) == 2
    assert "5 distinct names needed" in capsys.readouterr().err
    assert main(["data", "split", *files, "--out", str(tmp_path / "x"),
                 "--names", "a,b,c,d,../e"]) == 2
    assert "--names: site name '../e' holds a path separator" in capsys.readouterr().err
    assert main(["data", "split", files[0], files[0], "--out", str(tmp_path / "x")]) == 2
    assert "written over each other" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before anything was written


def _data_options():
    """(command, option) for every option of the ``mmvm data`` tree taking a value."""
    import argparse

    from mmvm.cli import build_parser

    found = []

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)
            elif action.option_strings and action.type is not None:
                found.append((parser.prog, action))

    walk(build_parser())
    return [(prog, action) for prog, action in found if prog.startswith("mmvm data ")]


@pytest.mark.parametrize("prog, action", _data_options(),
                         ids=lambda v: v if isinstance(v, str) else v.dest)
def test_numeric_options_say_their_default(prog, action):
    assert "default" in action.help, f"{prog} {action.option_strings[0]}"


def test_make_polymnist_help_shows_the_sample_counts(capsys):
    with pytest.raises(SystemExit):
        main(["data", "make", "polymnist", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--n-test N_TEST test samples (default: one pass over the test digits, " \
           "999 from npm" in help_text


def test_split_errors_name_the_subcommand(tiny_polymnist, tmp_path, capsys):
    files = [str(tiny_polymnist / "train.parquet"), str(tiny_polymnist / "test.parquet")]
    assert main(["data", "split", *files, "--out", str(tmp_path / "x"),
                 "--layout", "verticl"]) == 2
    assert capsys.readouterr().err.startswith(
        "mmvm data split: error: unknown site layout 'verticl'; choose one of "
        "['vertical', 'horizontal', 'hybrid']")
    assert main(["data", "make", "polymnist", "--out", str(tmp_path / "p"), "--quiet",
                 "--digits-source", "sklearn", "--n-train", "-1"]) == 2
    assert capsys.readouterr().err.startswith(
        "mmvm data make polymnist: error: --n-train -1: a split needs at least 1 sample")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag", ["--n-train", "--n-test"])
def test_make_polymnist_refuses_an_empty_split(tmp_path, capsys, flag):
    assert main(["data", "make", "polymnist", "--out", str(tmp_path / "p"), "--quiet",
                 "--digits-source", "sklearn", flag, "0"]) == 2
    assert capsys.readouterr().err.startswith(
        f"mmvm data make polymnist: error: {flag} 0: a split needs at least 1 sample")
    assert not (tmp_path / "p").exists()


def test_make_polymnist_refuses_more_samples_than_memory_holds(tmp_path, capsys):
    """--n-train 10^12 filled memory until the kernel killed the process; it is now
    refused before any sample is made, with what it would need."""
    assert main(["data", "make", "polymnist", "--out", str(tmp_path / "p"), "--quiet",
                 "--digits-source", "sklearn", "--n-train", str(10**12)]) == 2
    err = capsys.readouterr().err
    assert "PolyMNIST look-alike (train): 1,000,000,000,000 samples needs" in err
    assert "ask for fewer (--n-train" in err and err.count("\n") == 1
    assert not (tmp_path / "p" / "train.parquet").exists()


def test_check_calls_a_file_without_rows_an_error_naming_it(tiny_polymnist, tmp_path,
                                                            capsys):
    """What `data make polymnist --n-train 0` used to write: a valid, empty file, on
    which training later failed naming no file."""
    from mmvm.data.store import write_site_table

    empty = write_site_table(tmp_path / "empty.parquet", [],
                             {"m0": np.zeros((0, 3, 28, 28), np.uint8)},
                             {"label": np.zeros(0, np.int64)}, {"name": "polymnist"})
    good = str(tiny_polymnist / "test.parquet")
    assert main(["data", "check", good, str(empty)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {empty}: no rows; training and evaluation "
                                   f"need at least one sample")
    assert captured.err.count("error:") == 1 and "invalid" in captured.out
    assert captured.out.count(" ok ") == 1  # the other file is still checked


@pytest.mark.parametrize("layout", ["horizontal", "hybrid"])
@pytest.mark.parametrize("shards", ["1", "0"])
def test_split_refuses_fewer_than_two_shards(tiny_polymnist, tmp_path, capsys, layout,
                                             shards):
    """One horizontal shard is a single site with every sample (no federation); one
    hybrid shard is the vertical layout under another name."""
    assert main(["data", "split", str(tiny_polymnist / "train.parquet"), "--out",
                 str(tmp_path / "x"), "--layout", layout, "--shards", shards]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmvm data split: error: site layout '{layout}': shards must "
                          f"be >= 2, got {shards}")
    assert "Traceback" not in err and not (tmp_path / "x").exists()
