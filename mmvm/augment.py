"""Image augmentations of the judges' training batches: shifts and rotations.

A judge (``mmvm/classifiers.py``) of a look-alike sees 3,000-9,000 digits where the
authors' see 60,000; a digit moved by a pixel or turned a few degrees is still the
same digit. Each image gets its own draw from the caller's generator, so a judge's
training is a function of its seed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def random_shift(x: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """Each image of ``x`` [B, C, H, W] translated by its own offset in
    ``[-shift, shift]`` per axis; pixels moved in from outside repeat the edge."""
    if shift <= 0:
        return x
    b, c, h, w = x.shape
    padded = nn.functional.pad(x, (shift, shift, shift, shift), mode="replicate")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, b), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def rotate_images(x: Tensor, degrees: Tensor) -> Tensor:
    """Each image of ``x`` [B, C, H, W] turned counter-clockwise (as displayed, rows
    downwards) by its own angle ``degrees`` [B] about its centre (bilinear; pixels
    from outside repeat the edge). 90 degrees is ``torch.rot90(x, 1, (2, 3))``."""
    b, _, h, w = x.shape
    rad = torch.deg2rad(degrees.to(x.dtype))
    cos, sin = torch.cos(rad), torch.sin(rad)
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    # output pixel -> input pixel in normalised coordinates; h / w keeps the turn
    # rigid in pixel space when the image is not square
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                     align_corners=False)


def random_rotate(x: Tensor, degrees: float, generator: torch.Generator) -> Tensor:
    """Each image of ``x`` turned by its own angle, uniform in ``[-degrees, degrees]``."""
    if degrees <= 0:
        return x
    angles = (torch.rand(len(x), generator=generator) * 2 - 1) * degrees
    return rotate_images(x, angles.to(x.device))
