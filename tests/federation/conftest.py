"""Fixtures shared by the federation tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def cfg(request, tiny_polymnist, tiny_config):
    """The tiny PolyMNIST experiment, one epoch: 192 rows / 64, three one-step windows;
    a module marked ``pytest.mark.epochs(n)`` gets n epochs (3 n windows)."""
    torch.set_num_threads(1)
    marked = request.node.get_closest_marker("epochs")
    return tiny_config(tiny_polymnist, epochs=marked.args[0] if marked else 1)
