"""mmvm.training's run folder: checkpoint.pt, config.json and metrics.csv describe one
model (written together at each checkpoint, metrics rows between them); a fresh run
over an earlier one writes nothing before its first checkpoint; a resume rewrites the
two; bad data, out_dir, checkpoints and federated run folders are refused first."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mmvm.checkpoint as checkpoint
import mmvm.training as training
from mmvm.checkpoint import METRIC_FIELDS
from mmvm.data.dataset import MultimodalDataset
from mmvm.training import TrainingDivergedError, load_trained_model, train
from tests.support.training_data import (
    blobs,
    interrupt_at,
    nan_after,
    read_metrics_rows,
    tiny_config,
    two_factor_data,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data() -> MultimodalDataset:
    return two_factor_data()


def test_config_and_metrics_are_written_with_each_checkpoint_and_agree(tmp_path, data,
                                                                       monkeypatch):
    """checkpoint_every = 2 over 3 epochs in a new folder: epoch 1's metrics row is
    written at once (a divergence's lead-up stays on disk), config.json and the
    checkpoint with epoch 2, and at each checkpoint the files say what it says."""
    seen = []

    run = tmp_path / "run"

    def check(epoch):
        state = checkpoint.load_checkpoint(run / "checkpoint.pt")
        rows = read_metrics_rows(run / "metrics.csv")
        assert [int(r["epoch"]) for r in rows] == list(range(1, epoch + 1)) and \
            state["epoch"] == epoch
        assert [float(r["loss"]) for r in rows] == [h["loss"] for h in state["history"]]
        assert json.loads((run / "config.json").read_text()) == \
            json.loads(json.dumps(state["config"]))  # tuples as lists
        seen.append(epoch)

    calls = {"n": 0}
    real = training.train_step

    def step(*args, **kwargs):  # after epoch 1 (3 steps): its row, nothing else
        calls["n"] += 1
        if calls["n"] == 4:
            assert sorted(p.name for p in run.iterdir()) == ["metrics.csv"]
            assert [int(r["epoch"]) for r in read_metrics_rows(run / "metrics.csv")] == [1]
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_step", step)
    train(tiny_config(tmp_path / "run", epochs=3, checkpoint_every=2), data, show_progress=False,
          on_checkpoint=check)
    assert seen == [2, 3] and calls["n"] == 9


def test_a_fresh_run_stopped_before_its_first_checkpoint_leaves_the_old_run_whole(
        tmp_path, data, monkeypatch):
    train(tiny_config(tmp_path, epochs=2), data, show_progress=False)
    before = blobs(tmp_path)
    interrupt_at(monkeypatch, 2)  # Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, epochs=2, beta=4.0), data, resume=False, show_progress=False)
    assert blobs(tmp_path) == before
    monkeypatch.undo()
    nan_after(monkeypatch, 1)  # diverges in its first epoch
    with pytest.raises(TrainingDivergedError):
        train(tiny_config(tmp_path, epochs=2, lr=0.5), data, resume=False, show_progress=False)
    assert blobs(tmp_path) == before


def test_a_fresh_run_replaces_the_three_files_together_at_its_first_checkpoint(
        tmp_path, data, monkeypatch):
    train(tiny_config(tmp_path, epochs=2), data, show_progress=False)
    interrupt_at(monkeypatch, 5)  # epoch 2 of the fresh run: epoch 1 is checkpointed
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, epochs=2, beta=4.0), data, resume=False, show_progress=False)
    state = checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 1 and state["config"]["train"]["beta"] == 4.0
    assert json.loads((tmp_path / "config.json").read_text())["train"]["beta"] == 4.0
    assert len(read_metrics_rows(tmp_path / "metrics.csv")) == 1


def test_a_resume_rewrites_config_and_metrics_from_the_checkpoint(tmp_path, data):
    """Whatever an earlier run left beside the checkpoint (an aborted run's rows, a
    config of another model), a rerun puts back what the checkpoint says, even when
    nothing is left to train."""
    train(tiny_config(tmp_path, epochs=2), data, show_progress=False)
    right = blobs(tmp_path)
    (tmp_path / "metrics.csv").write_text(",".join(METRIC_FIELDS) + "\n1,3,9,9,9,0,1\n")
    (tmp_path / "config.json").write_text('{"model": {"method": "poe"}}')
    again = train(tiny_config(tmp_path, epochs=2), data, show_progress=False)
    assert again.trained_epochs == 0 and blobs(tmp_path) == right


def test_nothing_is_written_for_empty_data_or_an_unusable_out_dir(tmp_path, data):
    with pytest.raises(ValueError, match="the training data has no samples"):
        train(tiny_config(tmp_path / "run"), data.subset(np.arange(0)), show_progress=False)
    assert not (tmp_path / "run").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"afile is a file, not a folder; choose another "
                       r"train\.out_dir"):
        train(tiny_config(tmp_path / "afile"), data, show_progress=False)
    (tmp_path / "run" / "checkpoint.pt").mkdir(parents=True)  # found before training
    with pytest.raises(ValueError, match=r"checkpoint\.pt is a folder .* where the run's "
                       r"checkpoint\.pt goes"):
        train(tiny_config(tmp_path / "run"), data, show_progress=False)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["checkpoint.pt"]


def test_a_corrupted_checkpoint_advises_fresh_not_an_unsafe_load(tmp_path, data):
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError) as info:
        train(tiny_config(tmp_path), data, show_progress=False)
    text = str(info.value)
    assert text.startswith(f"checkpoint {tmp_path / 'checkpoint.pt'} cannot be read: it is "
                           "not a torch checkpoint, or it is truncated")
    assert "mmvm train --fresh" in text and "another train.out_dir" in text
    assert "weights_only" not in text and "\n" not in text
    fresh = train(tiny_config(tmp_path, epochs=1), data, resume=False, show_progress=False)
    assert fresh.trained_epochs == 1  # --fresh replaces it


def test_a_federated_checkpoint_is_not_resumed(tmp_path, data):
    """A federated run's checkpoint (no optimizer state) evaluates, but a resume
    would go on without Adam's moments: refused, naming what is missing."""
    train(tiny_config(tmp_path, epochs=1), data, show_progress=False)
    state = checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")
    del state["optimizer"]
    checkpoint.save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.raises(ValueError, match=r"is not a training checkpoint to resume \(it has "
                       r"no optimizer\); start over with `mmvm train --fresh`"):
        train(tiny_config(tmp_path, epochs=2), data, show_progress=False)
    model, _ = load_trained_model(tmp_path)
    assert model.names == ["a", "b"]
    (tmp_path / "results.json").write_text("{}")  # as the ServerApp writes beside it
    with pytest.raises(ValueError, match=r"checkpoint.pt is a federated run's assembled "
                       r"model .* choose another train.out_dir \(--fresh there would "
                       r"replace the run's checkpoint and metrics\)"):
        train(tiny_config(tmp_path, epochs=2), data, show_progress=False)


def test_weights_gone_nan_are_not_checkpointed(tmp_path, data, monkeypatch):
    """A step that leaves a weight infinite while its loss was finite (the next loss
    would be NaN, but the epoch ends first): the checkpoint after it is refused,
    naming the tensor, and epoch 1's stays."""
    calls, real = {"n": 0}, training.train_step

    def step(model, *args, **kwargs):
        out = real(model, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 6:  # the last step of epoch 2
            with torch.no_grad():
                model.decoders["b"].body[-1].bias[:2] = float("inf")
        return out

    monkeypatch.setattr(training, "train_step", step)
    train(tiny_config(tmp_path, epochs=1), data, show_progress=False)
    before = blobs(tmp_path)
    with pytest.raises(TrainingDivergedError) as info:
        train(tiny_config(tmp_path, epochs=2), data, show_progress=False)
    assert str(info.value).startswith("after epoch 2 (step 6) the model's weight decoders.b.")
    assert "(2 of its 6 values are NaN or infinite); not checkpointed; lower train.lr" \
        in str(info.value)
    assert checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert {k: v for k, v in blobs(tmp_path).items() if k != "metrics.csv"} == \
        {k: v for k, v in before.items() if k != "metrics.csv"}
