"""The judges' shift augmentation (mmvm.classifiers.random_shift)."""

import torch

from mmvm.classifiers import random_shift


def test_shift_zero_is_the_identity():
    x = torch.rand(4, 3, 28, 28)
    assert random_shift(x, 0, torch.Generator().manual_seed(0)) is x


def test_each_image_is_its_own_translation_with_edges_repeated():
    x = torch.rand(64, 2, 9, 7)
    out = random_shift(x, 2, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    offsets = set()
    for i in range(len(x)):
        # find the (dy, dx) in [-2, 2]^2 that reproduces image i: an interior pixel
        # (r, c) of the output is x[r - dy, c - dx], the border repeats x's edge
        hits = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                rows = (torch.arange(9) - dy).clamp(0, 8)
                cols = (torch.arange(7) - dx).clamp(0, 6)
                if torch.equal(out[i], x[i][:, rows][:, :, cols]):
                    hits.append((dy, dx))
        assert len(hits) == 1, (i, hits)
        offsets.add(hits[0])
    assert len(offsets) > 10  # offsets drawn per image, not one per batch


def test_shift_is_reproducible_from_the_generator():
    x = torch.rand(8, 1, 5, 5)
    a = random_shift(x, 1, torch.Generator().manual_seed(3))
    b = random_shift(x, 1, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)

