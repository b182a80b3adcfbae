"""What the trainer's tests share: a tiny two-modality dataset with one shared factor,
its config, metrics.csv rows, a Ctrl-C in the n-th training step, a folder's bytes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

import mmvm.training as training
from mmvm.config import ExperimentConfig, config_from_dict
from mmvm.data.dataset import MultimodalDataset
from mmvm.objectives import LossTerms

N, BS = 192, 64  # 3 steps per epoch


def two_factor_data() -> MultimodalDataset:
    """Two vector modalities driven by one shared 2-D factor, plus noise."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(N, 2))
    tensors = {m: (z @ rng.normal(size=(2, 6)) + 0.1 * rng.normal(size=(N, 6))).astype(np.float32)
               for m in ("a", "b")}
    mask = np.ones((N, 2), dtype=bool)
    mask[::7, 1] = False  # some samples lack b
    return MultimodalDataset([f"s{i:03d}" for i in range(N)], tensors,
                             {"a": 1.0, "b": 1.0}, mask, labels=(z[:, 0] > 0).astype(np.int64))


def tiny_config(out_dir, **train) -> ExperimentConfig:
    """MMVM on :func:`two_factor_data`, 2 epochs of 3 steps, into ``out_dir``."""
    mods = {m: {"kind": "vector", "shape": [6], "likelihood": "gaussian", "scale": 1.0,
                "width": 4, "layers": 1} for m in ("a", "b")}
    return config_from_dict({
        "model": {"method": "mmvm", "latent_dim": 8, "modalities": mods},
        "train": {"epochs": 2, "batch_size": BS, "lr": 1e-2, "seed": 5, "device": "cpu",
                  "out_dir": str(out_dir), **train}})


def read_metrics_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def interrupt_at(monkeypatch, call: int) -> None:
    """Ctrl-C in the ``call``-th training step (1-based)."""
    real, calls = training.train_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_step", step)


def blobs(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def nan_after(monkeypatch, n_calls: int) -> None:
    """The loss is NaN from the ``n_calls + 1``-th computation on."""
    real = training.compute_loss
    calls = {"n": 0}

    def fake(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > n_calls:
            return LossTerms(loss=terms.loss * float("nan"), rec_ll=terms.rec_ll, reg=terms.reg,
                             mu=terms.mu, logvar=terms.logvar)
        return terms

    monkeypatch.setattr(training, "compute_loss", fake)
