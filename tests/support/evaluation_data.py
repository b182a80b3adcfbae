"""What the evaluation tests share: an oracle model whose encoders and decoders are
identities on one-hot class vectors (coherence and the Gaussian NLL known in closed
form, judged by an argmax), and sklearn's 8x8 digits as three vector modalities
paired within class (a small, translation-free PolyMNIST analogue)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mmvm.config import ModalitySpec, config_from_dict
from mmvm.data.dataset import MultimodalDataset
from mmvm.model import MultimodalVAE

NAMES = ["m0", "m1", "m2"]

TRAIN_ROWS = 1400  # of sklearn's 1,797 digits; the rest are the test rows
TEST_ROWS = 1797 - TRAIN_ROWS


def oracle_model(weights=(1.0, 1.0, 1.0), perm_m1: bool = False,
                  private_dim: int = 0) -> MultimodalVAE:
    """Encoders/decoders that are identities on one-hot vectors; q has variance e^-30.
    With ``private_dim`` (MMVAE+) the codes get private dimensions that encoders set
    to 0 and decoders ignore."""
    specs = [ModalitySpec(m, "vector", (10,), likelihood="gaussian", scale=1.0, weight=w,
                          width=10, layers=1) for m, w in zip(NAMES, weights, strict=True)]
    model = MultimodalVAE(specs, latent_dim=10, private_dim=private_dim)
    eye, pad = torch.eye(10), torch.zeros(private_dim, 10)
    with torch.no_grad():
        for name in NAMES:
            enc, dec = model.encoders[name], model.decoders[name]
            enc.body[1][0].weight.copy_(eye), enc.body[1][0].bias.zero_()
            enc.mu.weight.copy_(torch.cat([eye, pad])), enc.mu.bias.zero_()
            enc.logvar.weight.zero_(), enc.logvar.bias.fill_(-30.0)
            dec.body[0][0].weight.copy_(torch.cat([eye, pad.T], 1)), dec.body[0][0].bias.zero_()
            out = eye.roll(1, 0) if (perm_m1 and name == "m1") else eye  # class c -> c+1
            dec.body[1].weight.copy_(out), dec.body[1].bias.zero_()
    return model.eval()


def onehot_dataset(n=50, mask=None) -> MultimodalDataset:
    y = np.arange(n) % 10
    x = np.eye(10, dtype=np.float32)[y]
    mask = np.ones((n, 3), bool) if mask is None else mask
    return MultimodalDataset([f"s{i}" for i in range(n)], {m: x for m in NAMES},
                             {m: 1.0 for m in NAMES}, mask, y)


ARGMAX = {m: nn.Flatten() for m in NAMES}  # logits = the vector itself: an argmax judge


def digit_vectors(tmp_path, labelled: bool = True):
    """sklearn's 8x8 digits as three vector modalities paired within class (a small,
    translation-free PolyMNIST analogue), written as train/test Parquet files (with
    ``labelled=False``: without their label column)."""
    from sklearn.datasets import load_digits

    from mmvm.data.store import write_site_table

    d = load_digits()
    rng = np.random.default_rng(0)
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    paths = {}
    for split, rows in (("train", np.arange(0, TRAIN_ROWS)),
                        ("test", np.arange(TRAIN_ROWS, len(d.target)))):
        mods = {m: np.empty((len(rows), 64), np.float32) for m in NAMES}
        for c in range(10):
            idx = rows[y[rows] == c]
            for m in NAMES:
                mods[m][y[rows] == c] = x[rng.permutation(idx)]
        ids = [f"{split}-{i}" for i in range(len(rows))]
        paths[split] = write_site_table(tmp_path / f"{split}.parquet", ids, mods,
                                        {"label": y[rows]} if labelled else {},
                                        {"name": "digit-vectors"})
    return paths


def vector_config(tmp_path, **train):
    mods = {m: {"kind": "vector", "shape": [64], "likelihood": "gaussian", "scale": 0.3,
                "width": 64, "layers": 1} for m in NAMES}
    return config_from_dict({
        "data": {"root": str(tmp_path)},
        "model": {"method": "mmvm", "latent_dim": 8, "modalities": mods},
        "train": {"epochs": 6, "batch_size": 64, "lr": 2e-3, "device": "cpu",
                  "out_dir": str(tmp_path / "run"), "num_threads": 1, **train},
        "eval": {"probe_train": 1000, "classifier_epochs": 30, "batch_size": 256},
    })


def run_copy(trained, tmp_path):
    """A copy of the run folder ``trained/run``, for a test to evaluate (and write)
    into."""
    import shutil
    from pathlib import Path

    return Path(shutil.copytree(trained / "run", tmp_path / "run"))


def findings_digits(tmp_path, names=("m0", "m1")):
    """sklearn's digits as vector modalities ``names`` with three binary label columns
    like findings (``label.even``, ``label.big``, ``label.zero``; no ``label``), and a
    config that probes them per label by AUROC (``eval.labels``, as MIMIC-CXR's)."""
    from sklearn.datasets import load_digits

    from mmvm.data.store import write_site_table

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    for split, rows in (("train", np.arange(0, 600)), ("test", np.arange(600, 900))):
        labels = {"label.even": y[rows] % 2, "label.big": (y[rows] >= 5).astype(np.int64),
                  "label.zero": (y[rows] == 0).astype(np.int64)}
        write_site_table(tmp_path / f"{split}.parquet", [f"{split}-{i}" for i in rows],
                         {m: x[rows] for m in names}, labels, {"name": "digits"})
    mods = {m: {"kind": "vector", "shape": [64], "likelihood": "gaussian", "scale": 0.3,
                "width": 16, "layers": 1} for m in names}
    return config_from_dict({
        "data": {"root": str(tmp_path), "label": "label"},
        "model": {"method": "mmvm", "latent_dim": 4, "modalities": mods},
        "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "seed": 1},
        "eval": {"labels": ["label.*"], "metric": "auroc", "probe_train": 1000,
                 "batch_size": 128}})
