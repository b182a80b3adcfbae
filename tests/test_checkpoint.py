"""Checkpoints load without unpickling code: a file from elsewhere cannot run code; an
unreadable one is one line naming it, and so is an edited field, NaN weights or a full
disk; a run folder's files are checked before any work and written together."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mmvm.checkpoint import (
    METRIC_FIELDS,
    MODEL_KEYS,
    RUN_FILES,
    STATE_KEYS,
    check_run_folder,
    load_checkpoint,
    save_checkpoint,
    save_run,
    training_state,
    write_companions,
)


class Payload:
    """A pickled object: loading it would import and run arbitrary code."""

    def __reduce__(self):
        return (print, ("this ran during torch.load",))


def test_tensors_and_plain_data_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "history": [{"loss": 1.5}],
             "config": {"train": {"lr": 1e-3, "shape": (3, 28, 28)}}}
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert back["history"] == state["history"] and back["config"] == state["config"]


def test_a_checkpoint_holding_objects_is_refused(tmp_path, capsys):
    torch.save({"model": {}, "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(tmp_path / "evil.pt")
    assert "this ran" not in capsys.readouterr().out
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


# ---------------------------------------------------------- unreadable files, one line
TORCH_ADVICE = ("weights_only", "arbitrary code", "file an issue", "Please", "\n")


@pytest.mark.parametrize("content", [b"garbage\n", b"", b"PK\x03\x04 cut short"])
def test_an_unreadable_file_is_named_in_one_line_without_torchs_advice(tmp_path, content):
    (tmp_path / "c.pt").write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_checkpoint(tmp_path / "c.pt")
    assert str(info.value) == (f"checkpoint {tmp_path / 'c.pt'} cannot be read: it is not "
                               "a torch checkpoint, or it is truncated (a partial copy or "
                               "download)")


def test_a_truncated_checkpoint_says_so(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"w": torch.zeros(1000)})
    blob = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"cannot be read: it is not a torch checkpoint, "
                       r"or it is truncated") as info:
        load_checkpoint(tmp_path / "c.pt")
    assert not any(words in str(info.value) for words in TORCH_ADVICE)


def test_a_file_holding_objects_is_refused_without_advising_an_unsafe_load(tmp_path):
    torch.save({"evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError) as info:
        load_checkpoint(tmp_path / "evil.pt")
    assert str(info.value) == (f"checkpoint {tmp_path / 'evil.pt'} cannot be read: it holds "
                               "Python objects other than tensors and plain data, which mmvm "
                               "does not load (loading them could run code)")


def test_a_folder_named_like_a_checkpoint(tmp_path):
    (tmp_path / "c.pt").mkdir()
    with pytest.raises(ValueError, match=r"checkpoint .*c\.pt is a folder, not a file"):
        load_checkpoint(tmp_path / "c.pt")


def test_training_state_names_what_a_checkpoint_lacks(tmp_path):
    save_checkpoint(tmp_path / "judge.pt", {"model": {}, "epoch": 1})  # e.g. a judge's
    with pytest.raises(ValueError, match=r"judge\.pt is not a training checkpoint to "
                       r"resume \(it has no config, optimizer, step, history\)"):
        training_state(tmp_path / "judge.pt")
    save_checkpoint(tmp_path / "t.pt", torch.zeros(3))  # not even a table
    with pytest.raises(ValueError, match=r"t\.pt is not a run's model \(it has no config, "
                       r"model\)"):
        training_state(tmp_path / "t.pt", keys=MODEL_KEYS)
    # a federated run's checkpoint has no optimizer: a model, not one to resume
    federated = {"config": {}, "model": {}, "epoch": 1, "step": 3, "history": []}
    save_checkpoint(tmp_path / "f.pt", federated)
    assert training_state(tmp_path / "f.pt", keys=MODEL_KEYS)["step"] == 3
    with pytest.raises(ValueError, match=r"it has no optimizer\)"):
        training_state(tmp_path / "f.pt")


# ------------------------------------------------------------------- the run folder
def test_check_run_folder_refuses_what_cannot_take_the_runs_files(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError) as info:
        check_run_folder(tmp_path / "afile")
    assert str(info.value) == (f"train.out_dir = {tmp_path / 'afile'}: {tmp_path / 'afile'} "
                               "is a file, not a folder; choose another train.out_dir")
    with pytest.raises(ValueError, match=rf"train.out_dir = {tmp_path / 'afile' / 'a' / 'b'}: "
                       rf"{tmp_path / 'afile'} is a file, not a folder"):
        check_run_folder(tmp_path / "afile" / "a" / "b")
    for name in RUN_FILES:
        run = tmp_path / f"run-{name}"
        (run / name).mkdir(parents=True)
        with pytest.raises(ValueError) as info:
            check_run_folder(run)
        assert str(info.value) == (f"{run / name} is a folder (or another non-file) where "
                                   f"the run's {name} goes; move it away or choose another "
                                   "train.out_dir")
    (tmp_path / "ev" / "eval.json").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"eval\.json goes; move it away$"):
        check_run_folder(tmp_path / "ev", ("eval.json",), "--run", elsewhere=False)
    check_run_folder(tmp_path / "new" / "deeper")  # not there yet: fine, nothing made
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_run_folder_refuses_a_folder_it_may_not_write_in(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ValueError, match=r"no permission to write in .*locked "
                           r"\(train\.out_dir = .*locked/run\); choose another"):
            check_run_folder(locked / "run")
    finally:
        locked.chmod(0o700)


def test_save_run_writes_config_and_metrics_from_the_checkpoint(tmp_path):
    history = [{"epoch": 1, "step": 3, "loss": 2.5, "rec_nll": 2.0, "reg": 0.5,
                "alpha": 0.0, "seconds": 0.1}]
    state = {"config": {"train": {"lr": 0.001}}, "model": {}, "optimizer": {}, "epoch": 1,
             "step": 3, "history": history}
    save_run(tmp_path / "run", state)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == sorted(RUN_FILES)
    assert json.loads((run / "config.json").read_text()) == state["config"]
    assert (run / "metrics.csv").read_text().splitlines() == [
        ",".join(METRIC_FIELDS), "1,3,2.5,2.0,0.5,0.0,0.1"]
    # the same state again: files already so are not rewritten
    stamps = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    write_companions(run, state)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == stamps


# ------------------------------------------------------- a full disk, diverged weights
def _state(**fields) -> dict:
    """A training checkpoint's fields (as mmvm train writes them), ``fields`` on top."""
    history = [{"epoch": 1, "step": 3, "loss": 2.5, "rec_nll": 2.0, "reg": 0.5,
                "alpha": 0.0, "seconds": 0.1}]
    return {"config": {"train": {"lr": 0.001}}, "model": {"enc.w": torch.ones(2, 3)},
            "optimizer": {"state": {}, "param_groups": [{"params": [0]}]}, "epoch": 1,
            "step": 3, "history": history, **fields}


def test_a_full_disk_while_saving_is_named_not_torchs_runtime_error(tmp_path, monkeypatch):
    """torch.save straight into the file turned ENOSPC into "unexpected pos";
    serialized in memory first, the write's own error names the checkpoint."""
    from tests.support.full_disk import disk_with_room

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state())
    before = path.read_bytes()
    disk_with_room(monkeypatch, 4096)
    with pytest.raises(OSError) as info:
        save_checkpoint(path, _state(model={"enc.w": torch.ones(100, 100)}))
    assert str(info.value).startswith(f"could not write {path}: No space left on device")
    assert str(info.value).endswith("; the previous checkpoint.pt is intact")
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint.pt"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_holding_nan_or_inf_are_neither_written_nor_loaded(tmp_path, bad):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state())
    before = path.read_bytes()
    weights = {"enc.w": torch.ones(2, 3), "dec.b": torch.tensor([0.0, bad, bad])}
    with pytest.raises(ValueError) as info:
        save_checkpoint(path, _state(model=weights))
    assert str(info.value) == (f"refusing to write {path}: the model's weight dec.b (2 "
                               "of its 3 values are NaN or infinite); the training "
                               "diverged (the previous checkpoint, if any, is kept)")
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint.pt"]
    torch.save(_state(model=weights), path)  # written by other means
    for keys in (STATE_KEYS, MODEL_KEYS):
        with pytest.raises(ValueError) as info:
            training_state(path, keys=keys)
        assert str(info.value) == (f"checkpoint {path}: the model's weight dec.b (2 of its "
                                   "3 values are NaN or infinite); the training diverged "
                                   "before it was written")


@pytest.mark.parametrize("field, value, said", [
    ("epoch", "x", "epoch is 'x', not a whole number >= 0"),
    ("epoch", -1, "epoch is -1, not a whole number >= 0"),
    ("epoch", True, "epoch is True, not a whole number >= 0"),
    ("step", None, "step is None, not a whole number >= 0"),
    ("step", 2.5, "step is 2.5, not a whole number >= 0"),
    ("history", 5, "history is an int, not a list of metrics rows"),
    ("history", [1], "history row 0 is an int, not a table of metrics"),
    ("config", [], "config is a list, not a table"),
    ("model", 5, "model is an int, not a table of weight tensors"),
    ("model", {"enc.w": [1.0]}, "model entry 'enc.w' is a list, not a weight tensor"),
])
def test_a_checkpoint_with_an_edited_field_is_refused_naming_it(tmp_path, field, value,
                                                                said):
    path = tmp_path / "checkpoint.pt"
    torch.save(_state(**{field: value}), path)
    for keys in (STATE_KEYS, MODEL_KEYS):
        with pytest.raises(ValueError) as info:
            training_state(path, keys=keys)
        assert str(info.value) == (f"checkpoint {path}: {said}; mmvm never writes that "
                                   "(the file was edited or damaged)")


@pytest.mark.parametrize("field, value, said", [
    ("optimizer", 5, "optimizer is not an optimizer's state (a table of state and "
                     "param_groups)"),
    ("history", [], "history has 0 rows for epoch 1 (one per epoch)"),
    ("history", [{"epoch": 1, "bogus": 2}], "history row 0 has 'bogus', not a "
                                            "metrics.csv column"),
])
def test_what_only_a_resume_needs_is_checked_for_a_resume(tmp_path, field, value, said):
    path = tmp_path / "checkpoint.pt"
    torch.save(_state(**{field: value}), path)
    with pytest.raises(ValueError) as info:
        training_state(path)
    assert str(info.value) == (f"checkpoint {path}: {said}; mmvm never writes that "
                               "(the file was edited or damaged)")
    assert training_state(path, keys=MODEL_KEYS)[field] == value  # a model to evaluate
