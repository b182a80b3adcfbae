"""The ``mmvm`` command line: every --help works, errors exit 2 and say what to do."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mmvm.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
POLYMNIST = str(ROOT / "configs" / "polymnist.toml")
HIPPOCAMPUS = str(ROOT / "configs" / "hippocampus.toml")


def _command_paths() -> list[list[str]]:
    """Every command and subcommand of the parser tree, e.g. ['data', 'make', 'polymnist']."""
    found: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append(path + [name])
                    walk(sub, path + [name])

    walk(build_parser(), [])
    return found


PATHS = _command_paths()


def test_the_tree_has_the_documented_commands():
    tops = {p[0] for p in PATHS}
    assert {"data", "train", "evaluate", "plot"} <= tops
    assert ["data", "make", "polymnist"] in PATHS and ["data", "make", "hippocampus"] in PATHS
    assert ["data", "check"] in PATHS and ["plot", "curves"] in PATHS


@pytest.mark.parametrize("path", [[]] + PATHS, ids=lambda p: " ".join(p) or "mmvm")
def test_help_exits_0_and_shows_usage(path, capsys):
    with pytest.raises(SystemExit) as info:
        main(path + ["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mmvm" + "".join(" " + p for p in path))
    assert "-h, --help" in out


@pytest.mark.parametrize("path", [["plot"], ["plot", "scatter"], ["plot", "curves"],
                                  ["plot", "latents"], ["encode"], ["evaluate"]],
                         ids=" ".join)
def test_help_says_what_the_command_does_in_plain_text(path, capsys):
    """A description under the usage, and no RST markup (``x``) from docstrings."""
    with pytest.raises(SystemExit):
        main(path + ["--help"])
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert not description.startswith(("positional arguments", "options")), out
    assert "``" not in out


def test_module_entry_point_help_in_a_subprocess():
    res = subprocess.run([sys.executable, "-m", "mmvm.cli", "train", "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert "usage: mmvm train" in res.stdout and "--set SECTION.KEY=VALUE" in res.stdout


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


# ------------------------------------------------------------------------ mmvm train
def test_train_config_typo_exits_2_naming_the_key(capsys):
    assert main(["train", "--config", POLYMNIST, "--set", "train.epochz=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmvm train: error: ")
    assert "'train.epochz'" in err and "did you mean 'train.epochs'?" in err


def test_train_subprocess_exit_status_2(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mmvm.cli", "train", "--config", POLYMNIST,
                          "--set", "train.epochz=1"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2 and "'train.epochz'" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_section_set_to_a_value_is_one_line_not_a_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mmvm.cli", "train", "--config", POLYMNIST,
                          "--set", "model=1"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (f"mmvm train: error: {POLYMNIST}, override 'model=1': "
                                  f"[model] must be a table (key = value pairs), got int 1")
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_without_config_the_reference_is_the_main_jobs_experiment(command, tmp_path, capsys,
                                                                  monkeypatch):
    """`mmvm train` / `mmvm evaluate` without --config read the experiment `mmvm run`
    trains (pyproject's run config), not the GPU-sized paper config."""
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    monkeypatch.chdir(tmp_path)  # no configs/ here: the error names the file it looked for
    assert main([command]) == 2
    assert f"{app['config']['config']} does not exist" in capsys.readouterr().err


def test_train_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "none.toml")]) == 2
    assert "none.toml does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("config, kind", [(POLYMNIST, "polymnist"), (HIPPOCAMPUS, "hippocampus")])
def test_train_missing_data_root_says_how_to_make_it(tmp_path, capsys, config, kind):
    root = tmp_path / "nodata"
    assert main(["train", "--config", config, "--set", f'data.root="{root}"',
                 "--set", f'train.out_dir="{tmp_path / "run"}"']) == 2
    err = capsys.readouterr().err
    assert f"{root / 'train.parquet'} does not exist" in err
    assert f"mmvm data make {kind} --out {root}" in err
    # a lab with recordings of its own is not sent to make a simulation in their place
    assert f"own: `mmvm data prepare {'hippocampus' if kind == 'hippocampus' else 'polymnist_png'}" \
        f" SRC --out {root}`" in err, err
    assert not (tmp_path / "run").exists()  # nothing written


def test_train_missing_data_gives_the_configs_own_recipe(tmp_path, capsys, monkeypatch):
    """polymnist_cpu trains on the soft variant with 3,000 samples: the advice is the
    config's recipe, not the default look-alike in a folder of a similar name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "polymnist").mkdir(parents=True)
    (tmp_path / "data" / "polymnist" / "train.parquet").touch()
    config = str(Path(POLYMNIST).with_name("polymnist_cpu.toml"))
    assert main(["train", "--config", config]) == 2
    assert capsys.readouterr().err.strip() == (
        "mmvm train: error: data/polymnist-soft/train.parquet does not exist; make it "
        "first: `mmvm data make polymnist --variant soft --n-train 3000 --n-test 1000 "
        "--out data/polymnist-soft` (a look-alike; recordings or images of your own: "
        "`mmvm data prepare polymnist_png SRC --out data/polymnist-soft`)")


@pytest.mark.parametrize("name, size", [("mimic_cxr", 224), ("mimic_cxr_64", 64)])
def test_train_missing_prepared_data_gives_the_configs_own_prepare_command(
        tmp_path, capsys, monkeypatch, name, size):
    """The two MIMIC-CXR configs differ in image size: each names its own --size and
    folder (the generic prepare hint led users to 64 px data for the 224 px config)."""
    monkeypatch.chdir(tmp_path)
    config = str(Path(POLYMNIST).with_name(f"{name}.toml"))
    assert main(["train", "--config", config]) == 2
    err = capsys.readouterr().err
    assert f"make it first: `mmvm data prepare mimic_cxr SRC --out data/{name} --size " \
           f"{size}` (SRC: the dataset as published" in err


def test_train_mistyped_data_root_suggests_the_folder_that_exists(tmp_path, capsys):
    (tmp_path / "polymnist").mkdir()
    (tmp_path / "polymnist" / "train.parquet").touch()
    assert main(["train", "--config", POLYMNIST, "--set",
                 f'data.root="{tmp_path / "polymnsit"}"']) == 2
    err = capsys.readouterr().err
    assert f"did you mean {tmp_path / 'polymnist' / 'train.parquet'}?" in err


def test_train_missing_data_for_other_modalities_points_to_prepare(tmp_path, capsys):
    root = tmp_path / "nodata"
    assert main(["train", "--config", HIPPOCAMPUS, "--set", f'data.root="{root}"',
                 "--set", "model.modalities.rat1.shape=[3]",
                 "--set", 'model.modalities.rat9.kind="vector"',
                 "--set", "model.modalities.rat9.shape=[3]"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and f"mmvm data prepare DATASET SRC --out {root}" in err


def _tiny_args(root, out, *extra):
    sets = [f'data.root="{root}"', f'train.out_dir="{out}"', "train.epochs=1",
            "train.batch_size=64", 'train.device="cpu"', "train.num_threads=1",
            "model.latent_dim=8"] + [f"model.modalities.m{i}.width=4" for i in range(3)]
    return ["train", "--config", POLYMNIST, "--no-progress",
            *[a for s in sets for a in ("--set", s)], *extra]


def test_train_runs_and_resumes(tiny_polymnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_tiny_args(tiny_polymnist, out)) == 0
    text = capsys.readouterr().out
    assert "trained mmvm for 1 epoch;" in text and str(out) in text
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "metrics.csv", "config.json"}
    blob = (out / "checkpoint.pt").read_bytes()
    assert main(_tiny_args(tiny_polymnist, out)) == 0  # resumed: already done
    assert (out / "checkpoint.pt").read_bytes() == blob
    # a changed config on the same folder is refused, and --fresh starts over
    assert main(_tiny_args(tiny_polymnist, out, "--set", "train.lr=0.002")) == 2
    err = capsys.readouterr().err
    assert "different config (train.lr: 0.0005 -> 0.002)" in err and "--fresh" in err
    assert "resume=False" not in err  # mmvm train has no such option
    assert (out / "checkpoint.pt").read_bytes() == blob
    assert main(_tiny_args(tiny_polymnist, out, "--fresh", "--set", "train.lr=0.002")) == 0
    assert (out / "checkpoint.pt").read_bytes() != blob


def test_a_second_train_on_a_run_folder_in_use_is_refused_touching_nothing(
        tiny_polymnist, tmp_path, capsys):
    """Two trainings writing one folder would sweep each other's temp files and
    interleave checkpoints; the second is refused while the first holds the folder
    (a flock, released however the first ends)."""
    from mmvm.folder_lock import folder_lock

    out = tmp_path / "run"
    assert main(_tiny_args(tiny_polymnist, out)) == 0
    writing = out / ".checkpoint.pt.abcd1234.tmp"  # the first one's write in progress
    writing.write_bytes(b"half")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    with folder_lock(out, "the first train"):
        assert main(_tiny_args(tiny_polymnist, out, "--fresh")) == 2
    err = capsys.readouterr().err
    assert f"{out}: another process (another mmvm train) is writing this folder" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(_tiny_args(tiny_polymnist, out)) == 0  # free again: it sweeps and runs
    assert not writing.exists()


def test_train_says_when_it_resumes_and_when_nothing_is_left(tiny_polymnist, tmp_path,
                                                               capsys):
    out = tmp_path / "run"
    assert main(_tiny_args(tiny_polymnist, out)) == 0
    capsys.readouterr()
    (out / "eval.json").write_text("{}")  # as `mmvm evaluate` leaves it, after the checkpoint
    assert main(_tiny_args(tiny_polymnist, out)) == 0  # rerun of a finished run
    assert (out / "eval.json").exists()  # nothing trained: it still scores the checkpoint
    text = capsys.readouterr().out
    assert text.startswith("nothing trained: the run is already complete at epoch 1")
    assert "raise train.epochs (e.g. --set train.epochs=2)" in text and "--fresh" in text
    assert "trained mmvm" not in text
    assert main(_tiny_args(tiny_polymnist, out, "--set", "train.epochs=3")) == 0
    first, *_, stale, last = capsys.readouterr().out.splitlines()
    assert first == f"resuming from epoch 1 of 3 ({out / 'checkpoint.pt'})"
    kept = [p.name for p in out.glob("eval.*.json")]  # it scored epoch 1, not 3
    assert not (out / "eval.json").exists() and len(kept) == 1
    assert stale.startswith(f"the evaluation of the earlier checkpoint is now {kept[0]}")
    assert last.startswith("trained mmvm for epochs 2-3 (resumed from epoch 1); "
                           "last epoch's mean loss ")


def test_train_divergence_exits_1_without_traceback(tiny_polymnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_tiny_args(tiny_polymnist, out, "--set", "train.lr=1e30")) == 1
    err = capsys.readouterr().err
    assert err.startswith("mmvm train: error: loss is ") and "lower train.lr" in err
    assert not (out / "checkpoint.pt").exists()


def test_train_with_a_modality_the_data_lacks(tiny_polymnist, tmp_path, capsys):
    args = _tiny_args(tiny_polymnist, tmp_path / "run", "--set",
                      'model.modalities.m3.kind="image"', "--set",
                      "model.modalities.m3.shape=[3, 28, 28]")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "mmvm train: error:" in err and "m3" in err


# -------------------------------------------------- last resorts: OSError, Ctrl-C
def _failing(monkeypatch, error: BaseException | None, afile: Path | None = None) -> None:
    """`mmvm evaluate` raising ``error``, or (None) writing under the file ``afile``."""
    import mmvm.cli.evaluate as evaluate

    def run(args):
        if error is None:  # the OS's own NotADirectoryError, with its path
            (afile / "eval.json").write_text("{}")
        else:
            raise error

    monkeypatch.setattr(evaluate, "run", run)


@pytest.mark.parametrize("error, said", [
    (IsADirectoryError(21, "Is a directory", "runs/x/eval.json"),
     "mmvm evaluate: error: Is a directory: runs/x/eval.json"),
    (PermissionError(13, "Permission denied", "runs/x/.eval.tmp", None, "runs/x/eval.json"),
     "mmvm evaluate: error: Permission denied: runs/x/.eval.tmp -> runs/x/eval.json"),
    (FileExistsError("runs/x/eval.json exists; pass --force"),
     "mmvm evaluate: error: runs/x/eval.json exists; pass --force"),
    (KeyboardInterrupt(), "mmvm evaluate: interrupted"),
])
def test_an_uncaught_os_error_or_ctrl_c_is_one_line(monkeypatch, capsys, error, said):
    _failing(monkeypatch, error)
    assert main(["evaluate"]) == (130 if isinstance(error, KeyboardInterrupt) else 2)
    assert capsys.readouterr().err == said + "\n"


def test_a_real_os_error_names_the_path(monkeypatch, capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    _failing(monkeypatch, None, tmp_path / "afile")
    assert main(["evaluate"]) == 2
    assert capsys.readouterr().err == (f"mmvm evaluate: error: Not a directory: "
                                       f"{tmp_path / 'afile' / 'eval.json'}\n")


@pytest.mark.parametrize("command", ["run", "site", "data", "report"])
def test_a_command_that_needs_no_torch_starts_without_it(command):
    """Only the named command's module is imported: ``mmvm run --help`` does not pay
    torch's import (~2 s of CPU)."""
    code = ("import sys\nfrom mmvm.cli import main\n"
            f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.stdout.strip().endswith("False"), res.stdout[-500:] + res.stderr[-2000:]


def test_an_unknown_command_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["trian"])
    said = capsys.readouterr().err
    assert "invalid choice: 'trian'" in said
    assert all(name in said for name in ("train", "evaluate", "run", "site", "report"))
