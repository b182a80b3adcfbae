"""mmvm.training + mmvm.checkpoint: learning, determinism, resume, divergence, atomicity."""

from __future__ import annotations

import math
import os

import pytest
import torch

import mmvm.atomic as atomic
import mmvm.checkpoint as checkpoint
import mmvm.training as training
from mmvm.checkpoint import METRIC_FIELDS
from mmvm.data.dataset import MultimodalDataset
from mmvm.training import (
    TrainingDivergedError,
    load_trained_model,
    resolve_device,
    train,
)
from tests.support.training_data import (
    nan_after,
    read_metrics_rows,
    tiny_config,
    two_factor_data,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data() -> MultimodalDataset:
    return two_factor_data()


def _params_equal(m1, m2) -> bool:
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


# ---------------------------------------------------------------------------- learning
def test_loss_falls_and_metrics_has_one_row_per_epoch(tmp_path, data):
    result = train(tiny_config(tmp_path, epochs=6), data, show_progress=False)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    # the data's variance is ~2 per dim, so a model that learns gains several nats
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert not result.model.training  # returned in eval mode

    rows = read_metrics_rows(tmp_path / "metrics.csv")
    assert list(rows[0]) == METRIC_FIELDS
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [int(r["step"]) for r in rows] == [3 * e for e in range(1, 7)]
    assert [float(r["loss"]) for r in rows] == pytest.approx(losses)
    for r in rows:
        # loss = rec_nll + beta * reg (beta = 1), as sample-weighted epoch means
        assert float(r["loss"]) == pytest.approx(float(r["rec_nll"]) + float(r["reg"]), rel=1e-5)
        assert float(r["alpha"]) == 0.0
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint.pt", "metrics.csv", "config.json"}


def test_same_seed_same_parameters_other_seed_differs(tmp_path, data):
    a = train(tiny_config(tmp_path / "a"), data, show_progress=False)
    b = train(tiny_config(tmp_path / "b"), data, show_progress=False)
    assert _params_equal(a.model, b.model)
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    c = train(tiny_config(tmp_path / "c", seed=6), data, show_progress=False)
    assert not _params_equal(a.model, c.model)


# ------------------------------------------------------------------------------ resume
def test_resume_equals_a_straight_run(tmp_path, data):
    straight = train(tiny_config(tmp_path / "straight", epochs=2), data, show_progress=False)
    first = train(tiny_config(tmp_path / "resumed", epochs=1), data, show_progress=False)
    assert len(first.history) == 1
    resumed = train(tiny_config(tmp_path / "resumed", epochs=2), data, show_progress=False)
    assert _params_equal(straight.model, resumed.model)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)
    assert len(read_metrics_rows(tmp_path / "resumed" / "metrics.csv")) == 2
    # optimiser state came along too (Adam moments and step count)
    s1 = checkpoint.load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    s2 = checkpoint.load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert (s1["epoch"], s1["step"]) == (s2["epoch"], s2["step"]) == (2, 6)
    for k, st in s1["optimizer"]["state"].items():
        for name, t in st.items():
            assert torch.equal(t, s2["optimizer"]["state"][k][name])


def test_rerun_of_a_finished_run_changes_nothing(tmp_path, data):
    first = train(tiny_config(tmp_path), data, show_progress=False)
    blob = (tmp_path / "checkpoint.pt").read_bytes()
    again = train(tiny_config(tmp_path), data, show_progress=False)
    assert _params_equal(first.model, again.model)
    assert (tmp_path / "checkpoint.pt").read_bytes() == blob
    fresh = train(tiny_config(tmp_path), data, resume=False, show_progress=False)
    assert _params_equal(first.model, fresh.model)  # same seed, from scratch


def test_resume_with_changed_config_raises_and_keeps_checkpoint(tmp_path, data):
    train(tiny_config(tmp_path, epochs=1), data, show_progress=False)
    blob = (tmp_path / "checkpoint.pt").read_bytes()
    for change, named in (({"lr": 2e-2}, r"train\.lr: 0\.01 -> 0\.02"),
                          ({"seed": 9}, r"train\.seed: 5 -> 9"),
                          ({"batch_size": 32}, r"train\.batch_size: 64 -> 32")):
        with pytest.raises(ValueError, match=r"checkpoint\.pt was written with a different "
                           rf"config \({named}\); use another train\.out_dir.*--fresh"):
            train(tiny_config(tmp_path, epochs=2, **change), data, show_progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == blob
    assert len(read_metrics_rows(tmp_path / "metrics.csv")) == 1


def test_config_changes_name_every_differing_key_old_to_new():
    saved = {"train": {"lr": 0.001, "seed": 0}, "model": {"modalities": {"a": {"width": 4}}}}
    now = {"train": {"lr": 0.002, "seed": 0},
           "model": {"modalities": {"a": {"width": 8}, "b": {"width": 4}}}}
    from mmvm.config import config_changes

    assert config_changes(saved, now) == [
        'model.modalities.a.width: 4 -> 8', 'model.modalities.b: (unset) -> {"width": 4}',
        "train.lr: 0.001 -> 0.002"]


def test_resume_says_where_it_starts_and_result_counts_epochs(tmp_path, data):
    said: list[str] = []
    first = train(tiny_config(tmp_path, epochs=1), data, show_progress=False, log=said.append)
    assert said == [] and (first.start_epoch, first.trained_epochs) == (0, 1)
    more = train(tiny_config(tmp_path, epochs=3), data, show_progress=False, log=said.append)
    assert said == [f"resuming from epoch 1 of 3 ({tmp_path / 'checkpoint.pt'})"]
    assert (more.start_epoch, more.trained_epochs) == (1, 2)
    said.clear()
    again = train(tiny_config(tmp_path, epochs=3), data, show_progress=False, log=said.append)
    assert said == [] and (again.start_epoch, again.trained_epochs) == (3, 0)


def test_without_a_terminal_each_epoch_is_a_line(tmp_path, data, monkeypatch):
    """A batch job's log: rich draws no live bar there (rich's own switch for it)."""
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    said: list[str] = []
    result = train(tiny_config(tmp_path, epochs=2), data, log=said.append)
    assert said == [f"epoch {r['epoch']}/2  loss {r['loss']:.1f}  rec_nll {r['rec_nll']:.1f}"
                    f"  reg {r['reg']:.2f}  {r['seconds']:.1f} s" for r in result.history]
    said.clear()
    train(tiny_config(tmp_path / "quiet", epochs=1), data, show_progress=False,
          log=said.append)
    assert said == []  # --no-progress: quiet


def _recording_bar(monkeypatch) -> list:
    """Replaces the trainer's progress bar; returns [(enabled, [descriptions])]."""
    from contextlib import contextmanager

    bars: list = []

    class Bar:
        console = type("Console", (), {"is_terminal": True, "is_jupyter": False,
                                        "is_dumb_terminal": False})()  # draws live

        def add_task(self, *a, **k):
            return 0

        def update(self, task, advance=0, description=""):
            bars[-1][1].append(description)

    @contextmanager
    def fake(enabled=True):
        bars.append((enabled, []))
        yield Bar()

    monkeypatch.setattr(training, "progress_bar", fake)
    return bars


def test_progress_bar_shows_the_running_epoch_mean_that_metrics_csv_records(
        tmp_path, data, monkeypatch):
    bars = _recording_bar(monkeypatch)
    result = train(tiny_config(tmp_path, epochs=2), data)
    enabled, texts = bars[0]
    assert enabled and len(texts) == 6  # 3 steps per epoch
    for epoch, row in enumerate(result.history, start=1):
        assert texts[3 * epoch - 1] == f"epoch {epoch}/2 mean loss {row['loss']:.1f}"
    # a rerun of the finished run trains nothing and draws no (empty "0/0") bar
    train(tiny_config(tmp_path, epochs=2), data)
    assert bars[1] == (False, [])


def test_a_checkpoint_from_before_new_config_keys_resumes(tmp_path, data):
    """Keys added to the config since a checkpoint was written take their defaults."""
    train(tiny_config(tmp_path, epochs=1), data, show_progress=False)
    state = checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")
    for spec in state["config"]["model"]["modalities"].values():
        spec.pop("network", None)
        spec.pop("classes", None)
    state["config"]["eval"] = {k: v for k, v in state["config"]["eval"].items()
                               if k not in ("labels", "metric")}
    checkpoint.save_checkpoint(tmp_path / "checkpoint.pt", state)
    resumed = train(tiny_config(tmp_path, epochs=2), data, show_progress=False)
    assert len(resumed.history) == 2


def test_resume_ignores_how_the_model_is_evaluated(tmp_path, data):
    """The [eval] section scores a finished model; changing it never refuses a resume
    (a benchmark re-scores saved runs under a new protocol without retraining)."""
    import dataclasses

    first = train(tiny_config(tmp_path, epochs=1), data, show_progress=False)
    blob = (tmp_path / "checkpoint.pt").read_bytes()
    cfg = tiny_config(tmp_path, epochs=1)
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(
        cfg.eval, probe_standardize=True, coherence_sample=False, probe_train=7))
    again = train(cfg, data, show_progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == blob
    assert _params_equal(first.model, again.model)


def test_a_moved_run_folder_resumes_and_equals_a_straight_run(tmp_path, data):
    straight = train(tiny_config(tmp_path / "straight", epochs=2), data, show_progress=False)
    train(tiny_config(tmp_path / "before", epochs=1), data, show_progress=False)
    (tmp_path / "before").rename(tmp_path / "after")
    resumed = train(tiny_config(tmp_path / "after", epochs=2), data, show_progress=False)
    assert len(resumed.history) == 2
    assert _params_equal(straight.model, resumed.model)


def test_resume_with_fewer_epochs_than_checkpoint_raises(tmp_path, data):
    train(tiny_config(tmp_path, epochs=2), data, show_progress=False)
    with pytest.raises(ValueError, match=r"already trained for 2 epochs.*train\.epochs = 1"):
        train(tiny_config(tmp_path, epochs=1), data, show_progress=False)


def test_load_trained_model_returns_the_trained_weights(tmp_path, data):
    result = train(tiny_config(tmp_path, epochs=1), data, show_progress=False)
    model, state = load_trained_model(tmp_path)
    assert _params_equal(model, result.model) and not model.training
    assert state["epoch"] == 1


def test_dataset_modalities_must_match_config(tmp_path, data):
    with pytest.raises(ValueError, match=r"dataset modalities \['b'\] differ from the config's"):
        train(tiny_config(tmp_path), data.select(["b"]), show_progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


# -------------------------------------------------------------------------- divergence
def test_nan_loss_raises_and_keeps_previous_checkpoint(tmp_path, data, monkeypatch):
    train(tiny_config(tmp_path, epochs=1), data, show_progress=False)
    ckpt, metrics = tmp_path / "checkpoint.pt", tmp_path / "metrics.csv"
    blobs = ckpt.read_bytes(), metrics.read_bytes()
    nan_after(monkeypatch, 1)  # second step of epoch 2 (global step 4)
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at step 4; lower train\.lr"):
        train(tiny_config(tmp_path, epochs=3), data, show_progress=False)
    assert (ckpt.read_bytes(), metrics.read_bytes()) == blobs
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    # the run can go on from the intact checkpoint, and ends where a clean run ends
    resumed = train(tiny_config(tmp_path, epochs=2), data, show_progress=False)
    straight = train(tiny_config(tmp_path / "straight", epochs=2), data, show_progress=False)
    assert _params_equal(resumed.model, straight.model)


def test_absurd_learning_rate_diverges_without_checkpoint(tmp_path, data):
    with pytest.raises(TrainingDivergedError, match=r"loss is (nan|inf|-inf) at step \d+"):
        train(tiny_config(tmp_path, epochs=2, lr=1e30), data, show_progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------- checkpoints
def test_save_and_load_round_trip(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3, "history": [{"loss": 1.5}]}
    checkpoint.save_checkpoint(tmp_path / "sub" / "c.pt", state)
    back = checkpoint.load_checkpoint(tmp_path / "sub" / "c.pt")
    assert torch.equal(back["w"], state["w"]) and back["epoch"] == 3
    assert back["history"] == [{"loss": 1.5}]
    assert os.listdir(tmp_path / "sub") == ["c.pt"]


def test_failed_save_keeps_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    checkpoint.save_checkpoint(path, {"v": 1})
    before = path.read_bytes()

    def broken_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(path, {"v": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.pt"]

    def broken_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        checkpoint.save_checkpoint(path, {"v": 3})
    with pytest.raises(OSError, match="rename failed"):
        atomic.atomic_write(tmp_path / "m.csv", b"epoch\n1\n")
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.pt"]
    assert checkpoint.load_checkpoint(path) == {"v": 1}


def test_corrupted_truncated_and_missing_checkpoints(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save_checkpoint(path, {"w": torch.zeros(100)})
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"checkpoint .*c\.pt cannot be read"):
        checkpoint.load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"checkpoint .*c\.pt cannot be read"):
        checkpoint.load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot be read"):
        checkpoint.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*none\.pt"):
        checkpoint.load_checkpoint(tmp_path / "none.pt")
    # bytes of a weight changed after the write: torch loads them without a word (the
    # run then failed with "loss is nan ... lower train.lr"); the CRC catches them
    from tests.support.damage import flip_tensor_bytes

    checkpoint.save_checkpoint(path, {"w": torch.zeros(100)})
    entry = flip_tensor_bytes(path)
    with pytest.raises(ValueError, match=rf"checkpoint .*c\.pt: its entry '{entry}' "
                                         rf"fails its CRC check"):
        checkpoint.load_checkpoint(path)


def test_training_on_a_corrupted_checkpoint_raises_clearly(tmp_path, data):
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint\.pt cannot be read"):
        train(tiny_config(tmp_path), data, show_progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"garbage"  # not overwritten


# ------------------------------------------------------------------------------ device
def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=rf"device '{name}' requested but CUDA is not "
                                             r"available"):
            resolve_device(name)
    with pytest.raises(ValueError, match=r"device 'mps' requested but Apple's MPS is not "
                       r"available on this machine; use cpu or auto"):
        resolve_device("mps")
    for name, hint in (("tpu", ""), ("CPU", "; did you mean 'cpu'?")):
        with pytest.raises(ValueError) as info:
            resolve_device(name)
        assert str(info.value) == (f"{name!r} is not a device; choose auto, cpu, cuda, "
                                   f"cuda:<n> or mps{hint}")


def test_resolve_device_names_the_cuda_devices_there_are(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"device 'cuda:2' requested but this machine has 2 "
                       r"CUDA devices \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


def test_bf16_autocast_and_channels_last_train_and_stay_close(tmp_path, data):
    """The speed switches change the arithmetic, not the model: a step in bfloat16
    autocast and NHWC layout lands near the float32 NCHW step."""
    ref = train(tiny_config(tmp_path / "ref", epochs=1), data, show_progress=False)
    fast = train(tiny_config(tmp_path / "fast", epochs=1, amp="bf16", channels_last=True), data,
                 show_progress=False)
    a, b = ref.model.state_dict(), fast.model.state_dict()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert 0 < worst < 0.05, worst
    assert ref.history[0]["loss"] == pytest.approx(fast.history[0]["loss"], rel=0.05)
    with pytest.raises(ValueError, match="fp16' needs CUDA"):
        train(tiny_config(tmp_path / "fp16", epochs=1, amp="fp16", device="cpu"), data,
              show_progress=False)
