"""What the `mmvm evaluate` tests share: one run trained on the digit vectors and
a guard that fails a test if evaluate gets to scoring."""

from __future__ import annotations

import pytest

from mmvm.data.dataset import MultimodalDataset
from tests.support.evaluation_data import NAMES, digit_vectors, vector_config


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One epoch on the digit vectors: the data folder, its run in <data>/run."""
    from mmvm.training import train

    data = tmp_path_factory.mktemp("evaluate-data")
    paths = digit_vectors(data)
    train(vector_config(data, epochs=1), MultimodalDataset.from_parquet(paths["train"], NAMES),
          show_progress=False)
    return data


@pytest.fixture
def no_scoring(monkeypatch):
    """Fails the test if evaluate gets as far as scoring."""
    import mmvm.evaluation

    def scored(*args, **kwargs):
        raise AssertionError("scored before refusing")

    monkeypatch.setattr(mmvm.evaluation, "evaluate_run", scored)

