"""Generation grids: each modality drawn as it reads best (images unstretched,
matrices as heatmaps, vectors as curves beside the sample's own values)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmvm.config import ModalitySpec
from mmvm.data.dataset import MultimodalDataset
from mmvm.model import MultimodalVAE
from mmvm.plot_generations import generation_figure, generation_grid

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n"


def _dataset(specs, n, mask=None, labels=None, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {s.name: (rng.integers(0, 255, (n, *s.shape), dtype=np.uint8)
                       if s.kind == "image" else rng.random((n, *s.shape), dtype=np.float32))
              for s in specs}
    scales = {s.name: 255.0 if s.kind == "image" else 1.0 for s in specs}
    mask = np.ones((n, len(specs)), bool) if mask is None else mask
    return MultimodalDataset([f"s{i}" for i in range(n)], arrays, scales, mask,
                             np.arange(n) if labels is None else labels)


def test_generation_grid_writes_a_png_per_method(tmp_path):
    specs = [ModalitySpec("a", "image", (3, 28, 28), width=4),
             ModalitySpec("b", "vector", (10,), width=8, layers=1)]
    model = MultimodalVAE(specs, latent_dim=4, seed=0).eval()
    ds = _dataset(specs, 6)
    for method in ("mmvm", "poe"):
        out = generation_grid(model, ds, tmp_path / f"grid-{method}.png", n=4, method=method)
        data = out.read_bytes()
        assert data.startswith(PNG) and len(data) > 2000


def test_images_keep_their_aspect_and_vectors_are_curves_beside_the_truth():
    """A researcher's mixed data drew lab values as pixel squares and stretched the
    images to fill the panel."""
    specs = [ModalitySpec("xray", "image", (1, 28, 28), width=4),
             ModalitySpec("labs", "vector", (7,), width=8, layers=1)]
    model = MultimodalVAE(specs, latent_dim=4, seed=0).eval()
    mask = np.ones((5, 2), bool)
    mask[1, 1] = False  # sample 1 has no lab values: no grey curve for it
    ds = _dataset(specs, 5, mask)
    fig = generation_figure(model, ds, n=3)
    axes = fig.axes
    assert len(axes) == 2 * 3  # two blocks of (input, -> xray, -> labs)
    for ax in (axes[0], axes[1], axes[4]):  # rows of images
        assert ax.get_aspect() == 1.0
        (image,) = ax.get_images()
        assert image.get_array().shape[:2] == (1 + 28 + 1, 1 + 3 * 29)
    assert not axes[2].get_images() and not axes[3].get_images()
    labs = ds.batch(torch.arange(3))["x"]["labs"]
    grey = [ln for ln in axes[2].get_lines() if ln.get_color() == "0.65"]
    blue = [ln for ln in axes[2].get_lines() if ln.get_color() == "C0"]
    assert len(blue) == 3 and len(grey) == 3
    np.testing.assert_allclose(grey[0].get_ydata(), labs[0].numpy())
    assert np.isnan(grey[1].get_ydata()).all()  # sample 1 lacks them
    np.testing.assert_array_equal(blue[2].get_xdata(), 2 * 8 + np.arange(7))
    inputs = [ln for ln in axes[3].get_lines() if ln.get_color() == "C0"]
    have = ds.batch(torch.tensor([0, 2, 3]))["x"]["labs"]  # the samples that have labs
    np.testing.assert_allclose(inputs[1].get_ydata(), have[1].numpy())  # input: itself
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_matrices_are_heatmaps_that_fill_their_panel():
    specs = [ModalitySpec("rat1", "vector", (6, 10), width=8, layers=1),
             ModalitySpec("rat2", "vector", (4, 10), width=8, layers=1)]
    model = MultimodalVAE(specs, latent_dim=4, seed=0).eval()
    fig = generation_figure(model, _dataset(specs, 4), n=2)
    assert all(ax.get_aspect() == "auto" and len(ax.get_images()) == 1 for ax in fig.axes)
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_each_column_is_named_by_its_samples_class():
    """A hospital walkthrough's titles read 'label.finding [1, 0, 0, 2]' while the
    files store normal / effusion / pneumonia; then one string for eight columns."""
    import matplotlib.pyplot as plt

    specs = [ModalitySpec("a", "vector", (10,), width=8, layers=1),
             ModalitySpec("b", "image", (1, 28, 28), width=4)]
    model = MultimodalVAE(specs, latent_dim=4, seed=0).eval()
    ds = _dataset(specs, 4, labels=np.array([1, 0, -1, 2]))
    fig = generation_figure(model, ds, n=4, label_name="label.finding",
                            label_names=["effusion", "normal", "pneumonia"])
    vectors, images = fig.axes[0], fig.axes[3]
    for ax in (vectors, images):
        assert [t.get_text() for t in ax.get_xticklabels()] == [
            "normal", "effusion", "?", "pneumonia"]
    assert vectors.get_title() == "mmvm: generated from a (above each: label.finding)"
    np.testing.assert_allclose(vectors.get_xticks(), [4.5, 15.5, 26.5, 37.5])  # slot middles
    # pixel k is centred at k: tile j spans 1 + 29 j .. + 28, its middle 14.5 + 29 j
    np.testing.assert_allclose(images.get_xticks(), [14.5, 43.5, 72.5, 101.5])
    assert fig.axes[4].get_ylabel() == "-> a" and fig.axes[5].get_ylabel() == \
        "-> b (reconstruction)"
    plt.close(fig)
    fig = generation_figure(model, ds, n=4)  # no names: the ids
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "0", "-1", "2"]
    plt.close(fig)


def test_large_images_are_drawn_at_their_own_size():
    """A hospital's 224 px X-rays were shrunk to ~62 px tiles."""
    import matplotlib.pyplot as plt

    specs = [ModalitySpec("a", "image", (1, 64, 64), width=2, network="res_image"),
             ModalitySpec("b", "vector", (5,), width=8, layers=1)]
    model = MultimodalVAE(specs, latent_dim=4, seed=0).eval()
    fig = generation_figure(model, _dataset(specs, 4), n=4)
    assert fig.get_size_inches()[0] == pytest.approx(4 * 0.9)  # 64 px: the least width
    plt.close(fig)
    big = [ModalitySpec("a", "image", (1, 224, 224), width=2, network="res_image")]
    model = MultimodalVAE(big, latent_dim=4, seed=0).eval()
    fig = generation_figure(model, _dataset(big, 3), n=3)
    assert fig.get_size_inches()[0] * 120 == pytest.approx(3 * 224)  # px at dpi 120
    plt.close(fig)


def test_a_source_no_sample_has_is_said():
    specs = [ModalitySpec("a", "vector", (5,), width=8, layers=1),
             ModalitySpec("b", "vector", (5,), width=8, layers=1)]
    model = MultimodalVAE(specs, latent_dim=4, seed=0).eval()
    mask = np.ones((3, 2), bool)
    mask[:, 1] = False
    fig = generation_figure(model, _dataset(specs, 3, mask), n=3)
    assert fig.axes[3].get_title() == "from b: no samples have it"
    assert not fig.axes[3].axison
    import matplotlib.pyplot as plt
    plt.close(fig)
