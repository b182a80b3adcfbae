"""What the `mmvm evaluate` tests share: one run trained on the digit vectors and
a guard that fails a test if evaluate gets to scoring; the `mmvm site check` tests,
three sites with keys (``fed``)."""

from __future__ import annotations

import pytest

from mmvm.data.dataset import MultimodalDataset
from tests.support.evaluation_data import NAMES, digit_vectors, vector_config
from tests.support.site_nodes import three_sites


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



@pytest.fixture
def fed(tiny_polymnist, tmp_path) -> dict:
    """Three vertical sites' files, every site's keys, the directory."""
    return three_sites(tiny_polymnist, tmp_path)
