"""The PolyMNIST look-alikes: the paper's translated digits and the original, in place."""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.data.polymnist import make_polymnist
from mmvm.data.store import read_site_table


@pytest.mark.parametrize("variant,size,offsets", [("translated", 21, range(8)),
                                                  ("untranslated", 28, [0]),
                                                  ("soft", 28, [0])])
def test_variants_place_the_digit_as_their_recipe_says(tmp_path, variant, size, offsets):
    paths = make_polymnist(tmp_path / variant, seed=1, n_train=60, n_test=20,
                           digits_source="sklearn", variant=variant)
    t = read_site_table(paths["train"])
    assert t.dataset_meta["variant"] == variant
    assert t.dataset_meta["recipe"]["resize"].endswith(f"{size}x{size}, antialiased bilinear")
    for m in ("m0", "m1", "m2"):
        oy, ox = t.columns[f"offset_y.{m}"], t.columns[f"offset_x.{m}"]
        assert set(oy) <= set(offsets) and set(ox) <= set(offsets)
    if variant == "translated":
        assert len(set(t.columns["offset_y.m0"])) > 1
    again = read_site_table(make_polymnist(tmp_path / "again", seed=1, n_train=60,
                                           n_test=20, digits_source="sklearn",
                                           variant=variant)["train"])
    assert all(np.array_equal(t.tensors[m], again.tensors[m]) for m in t.tensors)


def test_an_unknown_variant_is_refused(tmp_path):
    with pytest.raises(ValueError, match="variant must be one of"):
        make_polymnist(tmp_path, n_train=10, n_test=5, digits_source="sklearn",
                       variant="rotated")


def test_soft_backgrounds_keep_the_colour_and_lose_texture():
    from mmvm.data.polymnist import load_backgrounds

    raw, soft = load_backgrounds(), load_backgrounds(blur=2.0, contrast=0.5)
    for m in raw:
        a, b = raw[m].astype(float), soft[m].astype(float)
        assert abs(a.mean() - b.mean()) < 3  # the mean colour stays
        assert np.abs(np.diff(b, axis=0)).mean() < 0.5 * np.abs(np.diff(a, axis=0)).mean()
