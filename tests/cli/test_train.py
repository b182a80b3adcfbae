"""``mmvm train`` on real files: the run folder always describes one model (a --fresh
run replaces the old one only with its first checkpoint; Ctrl-C, SIGTERM, a full disk
and divergence leave what was there), and bad places, devices, checkpoints and data
are one line, exit 2, before any work."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from mmvm.cli import main
from tests.support.training_data import blobs, interrupt_at

ROOT = Path(__file__).resolve().parents[2]
POLYMNIST = str(ROOT / "configs" / "polymnist.toml")


def _args(root, out, *extra) -> list[str]:
    """mmvm train on the tiny PolyMNIST look-alike: 1 epoch of 3 steps, narrow nets."""
    sets = [f'data.root="{root}"', f'train.out_dir="{out}"', "train.epochs=1",
            "train.batch_size=64", 'train.device="cpu"', "train.num_threads=1",
            "model.latent_dim=8"] + [f"model.modalities.m{i}.width=4" for i in range(3)]
    return ["train", "--config", POLYMNIST, "--no-progress",
            *[a for s in sets for a in ("--set", s)], *extra]


def _evaluated(out: Path) -> None:
    """What `mmvm evaluate` and `mmvm plot curves` leave after the checkpoint."""
    (out / "eval.json").write_text('{"method": "mmvm"}')
    (out / "generations.png").write_bytes(b"\x89PNG old generations")
    (out / "curves.png").write_bytes(b"\x89PNG old curves")


def _method(out: Path) -> str:
    return json.loads((out / "config.json").read_text())["model"]["method"]


# ------------------------------------------------------------ one model per folder
def test_a_fresh_run_replaces_the_old_one_only_with_its_first_checkpoint(
        tiny_polymnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_polymnist, out)) == 0
    _evaluated(out)
    before = blobs(out)
    capsys.readouterr()
    # diverges before its first checkpoint: config.json, metrics.csv, all as they were
    poe = ("--fresh", "--set", 'model.method="poe"')
    assert main(_args(tiny_polymnist, out, *poe, "--set", "train.lr=1e30")) == 1
    err = capsys.readouterr().err
    assert err.startswith("mmvm train: error: loss is ") and err.count("\n") == 1
    assert err.rstrip().endswith(
        f"({out} still holds the earlier run, untouched: --fresh replaces it only when the "
        "new run's first checkpoint is written)")
    assert blobs(out) == before and _method(out) == "mmvm"
    # trains: checkpoint, config.json and metrics.csv are the new model's; what scored
    # or pictured the old one is kept under its time
    assert main(_args(tiny_polymnist, out, *poe)) == 0
    said = capsys.readouterr().out
    assert _method(out) == "poe"
    assert torch.load(out / "checkpoint.pt")["config"]["model"]["method"] == "poe"
    assert not {"eval.json", "generations.png", "curves.png"} & set(os.listdir(out))
    for name in ("eval.json", "generations.png", "curves.png"):
        stem, suffix = name.split(".")
        (kept,) = out.glob(f"{stem}.*-*.{suffix}")
        assert kept.read_bytes() == before[name]
        assert kept.name in said
    assert "generations.png was made from the earlier checkpoint; it is now " \
        "generations." in said


def test_a_rerun_that_trains_nothing_keeps_the_evaluation_of_a_copied_folder(
        tiny_polymnist, tmp_path, capsys):
    """``cp -r`` gives the copy's files the times of the copy, in any order: a
    checkpoint newer than its own eval.json. A re-run that trained nothing (the run
    complete, or a resume refused) set the evaluation aside, and ``mmvm report`` showed
    the run as not evaluated. Only a call that writes a checkpoint sets aside."""
    out = tmp_path / "run"
    assert main(_args(tiny_polymnist, out)) == 0
    _evaluated(out)
    ckpt = out / "checkpoint.pt"
    later = ckpt.stat().st_mtime_ns + 10**9
    os.utime(ckpt, ns=(later, later))  # as a copy may leave it
    before = blobs(out)
    capsys.readouterr()
    assert main(_args(tiny_polymnist, out)) == 0
    assert "nothing trained" in capsys.readouterr().out
    assert main(_args(tiny_polymnist, out, "--set", "train.beta=4")) == 2  # refused resume
    assert blobs(out) == before


def test_ctrl_c_is_one_line_and_leaves_one_model(tiny_polymnist, tmp_path, capsys,
                                                 monkeypatch):
    out = tmp_path / "run"
    assert main(_args(tiny_polymnist, out)) == 0
    _evaluated(out)
    before = blobs(out)
    capsys.readouterr()
    beta4 = ("--set", "train.beta=4", "--set", "train.epochs=2")
    interrupt_at(monkeypatch, 2)  # in the first epoch: no checkpoint of the new run yet
    assert main(_args(tiny_polymnist, out, "--fresh", *beta4)) == 130
    assert capsys.readouterr().err == (
        f"mmvm train: interrupted; {out} still holds the earlier run, untouched: --fresh "
        "replaces it only when the new run's first checkpoint is written\n")
    assert blobs(out) == before
    monkeypatch.undo()
    interrupt_at(monkeypatch, 5)  # in epoch 2: epoch 1 is checkpointed
    assert main(_args(tiny_polymnist, out, "--fresh", *beta4)) == 130
    assert capsys.readouterr().err == (
        f"mmvm train: interrupted; the checkpoint of epoch 1 in {out} is intact; run the "
        "same command without --fresh to resume from it\n")
    assert json.loads((out / "config.json").read_text())["train"]["beta"] == 4.0
    assert len((out / "metrics.csv").read_text().splitlines()) == 2  # header + epoch 1
    assert not (out / "eval.json").exists() and len(list(out.glob("eval.*-*.json"))) == 1
    monkeypatch.undo()
    assert main(_args(tiny_polymnist, out, *beta4)) == 0  # as it said: resumes
    assert capsys.readouterr().out.startswith(f"resuming from epoch 1 of 2 ({out}")
    assert len((out / "metrics.csv").read_text().splitlines()) == 3


def _train_process(root, out, *extra, preexec=None) -> subprocess.Popen:
    """A real ``python -m mmvm train`` (one thread) in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "mmvm", *_args(root, out, *extra)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=out.parent,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=preexec)


def _ours(out: Path) -> list[str]:
    """Temp files of the run's atomic writes in ``out``."""
    return sorted(p.name for p in out.glob(".*.tmp"))


def test_a_ctrl_c_while_the_checkpoint_is_written_waits_for_its_metrics(
        tiny_polymnist, tmp_path, capsys, monkeypatch):
    """A real SIGINT the moment epoch 2's checkpoint is on disk (before config.json and
    metrics.csv are rewritten from it, and before the run has recorded it) is held
    until both are: metrics.csv is not behind the checkpoint, the message names the
    epoch on disk."""
    import mmvm.checkpoint as checkpoint

    out = tmp_path / "run"
    real, calls = checkpoint.save_checkpoint, []

    def save_then_ctrl_c(path, state):
        real(path, state)
        calls.append(state["epoch"])
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # delivered here, were it not held

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_ctrl_c)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # xdist ignores it
    try:
        assert main(_args(tiny_polymnist, out, "--set", "train.epochs=3")) == 130
    finally:
        signal.signal(signal.SIGINT, old)
    assert calls == [1, 2]
    assert capsys.readouterr().err == (
        f"mmvm train: interrupted; the checkpoint of epoch 2 in {out} is intact; run the "
        "same command to resume from it\n")
    assert torch.load(out / "checkpoint.pt")["epoch"] == 2
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 2


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_and_a_killed_runs_temp_files_are_swept(
        tiny_polymnist, tmp_path):
    """SIGTERM (a scheduler's stop, ``kill``) to a real ``mmvm train``: one line saying
    which checkpoint is intact and how to resume, exit 143, no temp file. Temp files a
    SIGKILLed run's writes left are removed when the next run starts; nothing else."""
    out = tmp_path / "run"
    out.mkdir()
    stale = [".checkpoint.pt.k1ll3d_x.tmp", ".metrics.csv.abcdefgh.tmp"]
    kept = ["notes.tmp", ".checkpoint.pt.tmp", ".eval.json.abcdefgh.tmp"]
    for name in stale + kept:
        (out / name).write_bytes(b"half a file")
    proc = _train_process(tiny_polymnist, out, "--set", "train.epochs=500")
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    said, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert re.fullmatch(rf"mmvm train: terminated \(SIGTERM\); the checkpoint of epoch "
                        rf"\d+ in {re.escape(str(out))} is intact; run the same command "
                        r"to resume from it\n", err), err
    assert said.startswith(f"removed 2 temporary files an interrupted write left in {out}")
    assert _ours(out) == sorted(kept[1:])  # the stale ones swept, none of this run's
    epoch = torch.load(out / "checkpoint.pt")["epoch"]
    assert len((out / "metrics.csv").read_text().splitlines()) - 1 >= epoch


@pytest.mark.slow
def test_a_full_disk_at_the_checkpoint_is_one_line_and_keeps_the_previous_one(
        tiny_polymnist, tmp_path):
    """A real refusal by the kernel: the file size limit (RLIMIT_FSIZE) lets the
    metrics through but not a checkpoint; torch's writer used to turn that into
    "unexpected pos". The folder stays as it was, with no temp file."""
    import resource

    out = tmp_path / "run"
    assert main(_args(tiny_polymnist, out)) == 0
    before = blobs(out)
    limit = len(before["checkpoint.pt"]) // 4

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = _train_process(tiny_polymnist, out, "--set", "train.epochs=2",
                          preexec=small_files)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    ckpt = out / "checkpoint.pt"
    assert err == (f"mmvm train: error: could not write {ckpt}: File too large (is the "
                   f"file system of {out} full, or a quota or file size limit hit?); the "
                   "previous checkpoint.pt is intact\n")
    assert blobs(out) == before
    assert main(_args(tiny_polymnist, out, "--set", "train.epochs=2")) == 0  # room again


@pytest.mark.parametrize("field, value, said", [
    ("epoch", "x", "epoch is 'x', not a whole number >= 0"),
    ("history", 5, "history is an int, not a list of metrics rows"),
    ("config", [], "config is a list, not a table"),
])
def test_a_checkpoint_with_an_edited_field_is_one_line_naming_it(
        tiny_polymnist, tmp_path, capsys, field, value, said):
    out = tmp_path / "run"
    assert main(_args(tiny_polymnist, out)) == 0
    state = torch.load(out / "checkpoint.pt")
    torch.save({**state, field: value}, out / "checkpoint.pt")
    before = blobs(out)
    capsys.readouterr()
    assert main(_args(tiny_polymnist, out, "--set", "train.epochs=2")) == 2
    assert capsys.readouterr().err == (
        f"mmvm train: error: checkpoint {out / 'checkpoint.pt'}: {said}; mmvm never "
        "writes that (the file was edited or damaged); start over with `mmvm train "
        "--fresh` (the file is replaced when the new run's first checkpoint is written) "
        "or choose another train.out_dir\n")
    assert blobs(out) == before


# --------------------------------------------------------- refused before any work
def test_an_out_dir_that_cannot_hold_the_run_is_refused_first(tiny_polymnist, tmp_path,
                                                              capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        assert main(_args(tiny_polymnist, out)) == 2
        assert capsys.readouterr().err == (
            f"mmvm train: error: train.out_dir = {out}: {afile} is a file, not a folder; "
            "choose another train.out_dir\n")
    run = tmp_path / "run"
    (run / "checkpoint.pt").mkdir(parents=True)
    assert main(_args(tiny_polymnist, run)) == 2
    assert capsys.readouterr().err == (
        f"mmvm train: error: {run / 'checkpoint.pt'} is a folder (or another non-file) "
        "where the run's checkpoint.pt goes; move it away or choose another "
        "train.out_dir\n")
    assert os.listdir(run) == ["checkpoint.pt"]  # no metrics.csv of a wasted training


def test_an_empty_out_dir_is_refused_and_the_current_folders_checkpoint_kept(
        tiny_polymnist, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"someone else's")
    assert main(_args(tiny_polymnist, "")) == 2  # train.out_dir=""
    assert "train.out_dir must be a folder" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"someone else's"


@pytest.mark.parametrize("device, said", [
    ("tpu", "train.device = 'tpu' is not a device; choose auto, cpu, cuda, cuda:<n> or mps"),
    ("CPU", "train.device = 'CPU' is not a device; choose auto, cpu, cuda, cuda:<n> or "
            "mps; did you mean 'cpu'?"),
    ("mps", "device 'mps' requested but Apple's MPS is not available on this machine; "
            "use cpu or auto"),
    ("cuda:1", "device 'cuda:1' requested but CUDA is not available on this machine"),
])
def test_device_names_are_checked_before_anything_is_written(
        tiny_polymnist, tmp_path, capsys, monkeypatch, device, said):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    out = tmp_path / "run"
    assert main(_args(tiny_polymnist, out, "--set", f'train.device="{device}"')) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmvm train: error: ") and err.count("\n") == 1
    assert err.rstrip().endswith(said)
    assert not out.exists()


def test_a_corrupted_checkpoint_is_one_line_advising_fresh(tiny_polymnist, tmp_path,
                                                           capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_text("garbage\n")
    assert main(_args(tiny_polymnist, out)) == 2
    err = capsys.readouterr().err
    assert err == (f"mmvm train: error: checkpoint {out / 'checkpoint.pt'} cannot be read: it "
                   "is not a torch checkpoint, or it is truncated (a partial copy or "
                   "download); start over with `mmvm train --fresh` (the file is replaced "
                   "when the new run's first checkpoint is written) or choose another "
                   "train.out_dir\n")
    assert os.listdir(out) == ["checkpoint.pt"]
    assert main(_args(tiny_polymnist, out, "--fresh")) == 0  # as advised


def test_a_train_file_without_rows_is_named_and_nothing_written(tiny_polymnist, tmp_path,
                                                                capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    table = pq.read_table(tiny_polymnist / "train.parquet")
    pq.write_table(table.slice(0, 0).replace_schema_metadata(table.schema.metadata),
                   empty / "train.parquet")
    shutil.copy(tiny_polymnist / "test.parquet", empty / "test.parquet")
    out = tmp_path / "run"
    assert main(_args(empty, out)) == 2
    assert capsys.readouterr().err == (
        f"mmvm train: error: no samples to train on: {empty / 'train.parquet'} has no "
        "rows; make the data again or set data.root to a folder with samples\n")
    assert not out.exists()


def test_a_test_split_evaluate_would_refuse_is_warned_of_before_training(
        tiny_polymnist, tmp_path, capsys):
    """An empty test.parquet was found by mmvm evaluate, after the training."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(tiny_polymnist / "train.parquet", data / "train.parquet")
    assert main(_args(data, tmp_path / "run")) == 0  # training needs no test split
    said = capsys.readouterr().err
    assert (f"mmvm train: warning: no test split: {data / 'test.parquet'} does not "
            "exist; training needs no test split, but mmvm evaluate will refuse the run "
            "until it has one") in said
    table = pq.read_table(tiny_polymnist / "test.parquet")
    pq.write_table(table.slice(0, 0).replace_schema_metadata(table.schema.metadata),
                   data / "test.parquet")
    assert main(_args(data, tmp_path / "run2")) == 0
    assert (f"mmvm train: warning: the test split {data / 'test.parquet'} has no rows"
            in capsys.readouterr().err)
    (data / "test.parquet").write_bytes(b"PAR1 not parquet")
    assert main(_args(data, tmp_path / "run3")) == 0
    err = capsys.readouterr().err
    assert "mmvm train: warning: the test split cannot be used: " in err
    assert str(data / "test.parquet") in err


def test_pixels_the_model_would_see_as_0_to_255_are_warned_of_at_the_start(
        tiny_polymnist, tmp_path, capsys):
    """uint8 images written with scale 1 trained silently on 0..255 against a decoder
    that ends in a sigmoid; the run still trains (the user may mean it)."""
    from mmvm.data.store import read_site_table, write_site_table

    data = tmp_path / "data"
    t = read_site_table(tiny_polymnist / "train.parquet")
    write_site_table(data / "train.parquet", t.sample_ids, t.tensors, t.labels, {},
                     scales={"m2": 1.0})
    shutil.copy(tiny_polymnist / "test.parquet", data / "test.parquet")
    assert main(_args(data, tmp_path / "run")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if "warning" in line]
    assert warnings == [
        f"mmvm train: warning: {data / 'train.parquet'}: modality 'm2' holds values "
        f"0..255 (stored value / the file's scale), outside 0..1: kind 'image' takes "
        f"pixels scaled to 0..1 (image decoders end in a sigmoid); the file stores uint8 "
        f"with scale 1: write it with scale 255 (the default for uint8), as mmvm data "
        f"prepare does"]
    assert main(_args(tiny_polymnist, tmp_path / "run2")) == 0  # the made data: none
    assert "warning" not in capsys.readouterr().err


def test_a_stop_right_after_the_checkpoint_is_written_says_it_is_this_runs(tmp_path):
    """Between the checkpoint's atomic write and the call that records it, the file's
    identity tells whose it is (the message must not say 'untouched')."""
    from mmvm.atomic import atomic_write
    from mmvm.cli.train import file_identity, left_behind, resume_hint

    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"the earlier run")
    before = file_identity(ckpt)
    assert "untouched" in left_behind(tmp_path, [], True, before)
    atomic_write(ckpt, b"this run")
    assert left_behind(tmp_path, [], True, before) == (
        f"this run's checkpoint in {ckpt} is intact (a resume rewrites its config.json "
        "and metrics.csv)")
    assert resume_hint(tmp_path, [], True, before) == (
        "; run the same command without --fresh to resume from it")


def test_a_label_column_the_data_lacks_is_warned_of_and_training_goes_on(
        tiny_polymnist, tmp_path, capsys):
    assert main([*_args(tiny_polymnist, tmp_path / "run"), "--set", "data.label=digit"]) == 0
    err = capsys.readouterr().err
    assert ("mmvm train: warning: no label column 'digit' (data.label) in the data; its "
            "label columns: label. Training needs none") in err
    assert "coherence will: e.g. --set data.label=label" in err  # the column there is
    # a config copied from mimic_cxr.toml probes its 14 findings: said before training,
    # with the fix (the hospital's evaluation failed afterwards, without it)
    assert main([*_args(tiny_polymnist, tmp_path / "run2"),
                 "--set", 'eval.labels=["label.atelectasis", "label*"]']) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert ("warning: eval.labels label.atelectasis match no label column of the data "
            "(label); training needs none, but mmvm evaluate will refuse them: e.g. --set "
            "'eval.labels=[\"label\"]', or --set 'eval.labels=[]' to probe data.label") in err


def test_in_a_log_file_each_epoch_is_a_line_written_as_it_ends(tiny_polymnist, tmp_path,
                                                                monkeypatch):
    """A batch job's log: stdout to a file is block-buffered, and the epoch lines
    (rich draws no bar there) came at the end with everything else (a review)."""
    import io

    class Log(io.StringIO):
        events: list[str] = []

        def write(self, text):
            self.events.append(text)
            return super().write(text)

        def flush(self):
            self.events.append("<flush>")

        def isatty(self):
            return False

    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    log = Log()
    monkeypatch.setattr(sys, "stdout", log)
    args = [a for a in _args(tiny_polymnist, tmp_path / "run", "--set", "train.epochs=2")
            if a != "--no-progress"]
    assert main(args) == 0
    lines = [i for i, e in enumerate(log.events)  # (not rich's closing bar)
             if e.startswith("epoch ") and "  rec_nll " in e]
    assert [log.events[i].split()[1] for i in lines] == ["1/2", "2/2"]
    assert all("<flush>" in log.events[i + 1:i + 3] for i in lines), log.events
