"""Fixtures shared by the federation tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def cfg(tiny_polymnist, tiny_config):
    """The tiny PolyMNIST experiment, one epoch: 192 rows / 64, three one-step windows
    (a file that needs more defines its own ``cfg``)."""
    torch.set_num_threads(1)
    return tiny_config(tiny_polymnist, epochs=1)
