"""Fixtures of the data tests."""

from __future__ import annotations

import numpy as np
import pytest

N = 120  # rows of the ``arrays`` fixture


@pytest.fixture
def arrays(tmp_path) -> dict:
    """An EEG-like float64 vector modality and a 28 px grey image, with ids and
    labels; the image site holds the same samples in another row order."""
    rng = np.random.default_rng(0)
    ids = [f"subject-{i:03d}" for i in range(N)]
    eeg = rng.normal(size=(N, 4, 6))
    img = rng.integers(0, 256, size=(N, 1, 28, 28), dtype=np.uint8)
    label = rng.integers(0, 3, size=N)
    perm = rng.permutation(N)
    np.save(tmp_path / "eeg.npy", eeg)
    np.save(tmp_path / "label.npy", label)
    np.save(tmp_path / "img.npy", img[perm])
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    np.save(tmp_path / "ids_img.npy", np.array(ids)[perm])
    return {"ids": ids, "eeg": eeg, "img": img, "label": label, "dir": tmp_path}
