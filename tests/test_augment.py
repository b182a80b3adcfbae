"""The judges' augmentations: per-image shifts and rotations (mmvm.augment)."""

import torch

from mmvm.augment import random_rotate, random_shift, rotate_images


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


def test_rotation_by_zero_is_the_identity_and_by_quarter_turns_is_rot90():
    x = torch.rand(3, 2, 8, 8)
    assert torch.allclose(rotate_images(x, torch.zeros(3)), x, atol=1e-6)
    # a quarter turn counter-clockwise as seen on screen (rows downwards) is rot90
    # over (H, W) with k = 1; a half turn flips both axes
    quarter = rotate_images(x, torch.full((3,), 90.0))
    assert torch.allclose(quarter, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)
    half = rotate_images(x, torch.full((3,), 180.0))
    assert torch.allclose(half, torch.flip(x, dims=(2, 3)), atol=1e-5)


def test_rotation_keeps_a_centred_disc_and_turns_each_image_by_its_own_angle():
    yy, xx = torch.meshgrid(torch.arange(15.0), torch.arange(15.0), indexing="ij")
    disc = (((yy - 7) ** 2 + (xx - 7) ** 2) <= 16).float()[None, None]
    turned = rotate_images(disc.repeat(4, 1, 1, 1), torch.tensor([10.0, 33.0, -45.0, 170.0]))
    r = ((yy - 7) ** 2 + (xx - 7) ** 2).sqrt()
    assert torch.allclose(turned[:, 0][:, r <= 2.5], torch.tensor(1.0))  # only the rim
    assert torch.allclose(turned[:, 0][:, r >= 5.5], torch.tensor(0.0))  # can change
    bar = torch.zeros(1, 1, 15, 15)
    bar[..., 7, 2:13] = 1.0  # horizontal bar: a quarter turn makes it vertical
    vertical = rotate_images(bar, torch.tensor([90.0]))
    assert torch.allclose(vertical[0, 0, 2:13, 7], torch.ones(11), atol=1e-5)


def test_random_rotation_draws_angles_within_bounds_from_the_generator():
    x = torch.rand(16, 1, 9, 9)
    assert random_rotate(x, 0.0, torch.Generator()) is x
    a = random_rotate(x, 15.0, torch.Generator().manual_seed(2))
    b = random_rotate(x, 15.0, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, x)
    angles = (torch.rand(16, generator=torch.Generator().manual_seed(2)) * 2 - 1) * 15.0
    assert torch.allclose(a, rotate_images(x, angles), atol=1e-6)
