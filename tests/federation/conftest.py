"""Tiny PolyMNIST look-alike shared by the federation tests (made once per session)."""

from __future__ import annotations

import pytest
import torch

from mmvm.config import config_from_dict
from mmvm.data.polymnist import make_polymnist


@pytest.fixture(scope="session")
def tiny_polymnist(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("polymnist")
    make_polymnist(root, seed=0, n_train=192, n_test=96)
    return root


def _tiny_config(root, method: str = "mmvm", **train) -> object:
    mods = {m: {"kind": "image", "shape": [3, 28, 28], "width": 4} for m in ("m0", "m1", "m2")}
    return config_from_dict({
        "data": {"root": str(root)},
        "model": {"method": method, "latent_dim": 8, "modalities": mods},
        "train": {"epochs": 2, "batch_size": 64, "lr": 1e-3, "beta": 1.0, "seed": 3,
                  "device": "cpu", **train},
    })


@pytest.fixture(scope="session")
def tiny_config():
    """A factory: tiny_config(root, method="mmvm", **train_overrides)."""
    return _tiny_config
