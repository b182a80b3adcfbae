"""Fixtures shared by the whole suite: one tiny PolyMNIST look-alike per session.

``tiny_polymnist`` is made once: seed 0, 192 train / 96 test samples (three batches of
64 per epoch), scikit-learn digits (no network), 16-row row groups (12 train groups, for
the streaming tests). ``tiny_config`` builds a small experiment config over it.
"""

from __future__ import annotations

import pytest
import torch

from mmvm.config import ExperimentConfig, config_from_dict
from mmvm.data.polymnist import make_polymnist


@pytest.fixture(scope="session")
def tiny_polymnist(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("polymnist")
    make_polymnist(root, seed=0, n_train=192, n_test=96, digits_source="sklearn",
                   row_group_size=16)
    return root


def pytest_collection_modifyitems(config, items) -> None:
    """Files with slow tests (real processes, training) first, each file's tests kept
    together (module fixtures are set up once). With the README's ``-n 2 --dist
    loadfile --no-loadscope-reorder`` both workers start on the long files and the many
    quick ones fill in at the end; xdist's own order (most tests per file first) would
    start the longest single tests last."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


def _tiny_config(root, method: str = "mmvm", **train) -> ExperimentConfig:
    mods = {m: {"kind": "image", "shape": [3, 28, 28], "width": 4} for m in ("m0", "m1", "m2")}
    return config_from_dict({
        "data": {"root": str(root)},
        "model": {"method": method, "latent_dim": 8, "modalities": mods},
        "train": {"epochs": 2, "batch_size": 64, "lr": 1e-3, "beta": 1.0, "seed": 3,
                  "device": "cpu", **train},
        # the judges (coherence) train 3 epochs of 3 steps, not the 100 steps at
        # least that make image judges worth trusting: the tests check the plumbing
        "eval": {"classifier_min_image_steps": 0},
    })


@pytest.fixture(scope="session")
def tiny_config():
    """A factory: tiny_config(root, method="mmvm", **train_overrides)."""
    return _tiny_config
