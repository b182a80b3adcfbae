"""``polymnist_resnet``: the authors' PolyMNIST network for [C, 28, 28] images.

As ``networks/ConvNetworksPolyMNIST.py`` (``ResnetEncoder`` / ``ResnetDecoder``) of
thomassutter/mmvmvae, with ``w`` = the spec's ``width`` (paper: 64, so channels
64 / 128 / 256 and latent 512):

- ``ResnetBlock(fin, fout)``: ``dx = conv_1(lrelu(conv_0(lrelu(x))))``, both 3x3 with
  padding 1 and ``fhidden = min(fin, fout)`` channels in between, LeakyReLU slope 0.2;
  ``out = shortcut(x) + 0.1 dx``, the shortcut a bias-free 1x1 conv when
  ``fin != fout`` and the identity otherwise; no normalisation.
- encoder: ``Conv(C -> w, 3, p1)``; blocks at ``w`` (28); ``AvgPool(3, s2, p1)`` -> 14;
  blocks ``w -> 2w``; ``AvgPool`` -> 7; blocks ``2w -> 4w``; flatten ``4w * 49``;
  linear heads to mu and logvar (no activation in front).
- decoder: ``Linear(D -> 4w * 49)``, reshape ``(4w, 7, 7)``; blocks ``4w -> 2w``;
  nearest ``Upsample(x2)`` -> 14; blocks ``2w -> w``; ``Upsample`` -> 28; blocks at ``w``;
  ``Conv(w -> C, 3, p1)`` of ``lrelu(x)``. **No final sigmoid**: the output is the
  Laplace location and may leave [0, 1], as in the authors' code.

``layers`` = residual blocks per stage (default 1, the authors' net); a stage's first
block changes the width, the others keep it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmvm.networks.registry import Network, register_network


class ResnetBlock(nn.Module):
    """shortcut(x) + 0.1 * conv_1(lrelu(conv_0(lrelu(x))))."""

    def __init__(self, fin: int, fout: int) -> None:
        super().__init__()
        hidden = min(fin, fout)
        self.conv_0 = nn.Conv2d(fin, hidden, 3, padding=1)
        self.conv_1 = nn.Conv2d(hidden, fout, 3, padding=1)
        self.shortcut = nn.Conv2d(fin, fout, 1, bias=False) if fin != fout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        dx = self.conv_1(F.leaky_relu(self.conv_0(F.leaky_relu(x, 0.2)), 0.2))
        return self.shortcut(x) + 0.1 * dx


def _stage(fin: int, fout: int, blocks: int) -> list[nn.Module]:
    return [ResnetBlock(fin, fout)] + [ResnetBlock(fout, fout) for _ in range(blocks - 1)]


class ResnetEncoder(nn.Module):
    def __init__(self, channels: int, width: int, latent_dim: int, blocks: int = 1) -> None:
        super().__init__()
        w = width
        self.conv_img = nn.Conv2d(channels, w, 3, padding=1)
        self.resnet = nn.Sequential(
            *_stage(w, w, blocks),  # (w, 28, 28)
            nn.AvgPool2d(3, stride=2, padding=1), *_stage(w, 2 * w, blocks),  # (2w, 14, 14)
            nn.AvgPool2d(3, stride=2, padding=1), *_stage(2 * w, 4 * w, blocks),  # (4w, 7, 7)
        )
        self.fc_mu = nn.Linear(4 * w * 49, latent_dim)
        self.fc_lv = nn.Linear(4 * w * 49, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.resnet(self.conv_img(x)).flatten(1)  # (B, 4w * 49)
        return self.fc_mu(h), self.fc_lv(h)


class ResnetDecoder(nn.Module):
    def __init__(self, channels: int, width: int, latent_dim: int, blocks: int = 1) -> None:
        super().__init__()
        w = width
        self.fc = nn.Linear(latent_dim, 4 * w * 49)
        self.resnet = nn.Sequential(
            nn.Unflatten(1, (4 * w, 7, 7)),
            *_stage(4 * w, 2 * w, blocks), nn.Upsample(scale_factor=2),  # (2w, 14, 14)
            *_stage(2 * w, w, blocks), nn.Upsample(scale_factor=2),  # (w, 28, 28)
            *_stage(w, w, blocks),
        )
        self.conv_img = nn.Conv2d(w, channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        return self.conv_img(F.leaky_relu(self.resnet(self.fc(z)), 0.2))  # (B, C, 28, 28)


@register_network("polymnist_resnet")
class PolyMNISTResnet(Network):
    """The authors' residual PolyMNIST encoder/decoder (paper width 64)."""

    kinds = ("image",)
    takes = "[C, 28, 28]"

    @staticmethod
    def accepts(shape: tuple[int, ...]) -> bool:
        return len(shape) == 3 and shape[1:] == (28, 28)

    @classmethod
    def encoder(cls, spec, latent_dim: int) -> nn.Module:
        return ResnetEncoder(spec.shape[0], spec.width, latent_dim, cls.depth(spec))

    @classmethod
    def decoder(cls, spec, latent_dim: int) -> nn.Module:
        return ResnetDecoder(spec.shape[0], spec.width, latent_dim, cls.depth(spec))
