"""Per-modality encoders and decoders; encoders return (mu, logvar) of a diagonal Gaussian.

- Images [C, 28, 28]: a residual conv net 28 -> 14 -> 7 (reference note, section 4),
  widths ``w, 2w, 4w``; linear heads from the ``4w x 7 x 7`` features to mu and logvar.
  The decoder mirrors it and ends in a sigmoid (pixel values lie in [0, 1]).
- Vectors (spike counts, any shape): an MLP ``D -> H -> ... -> H`` with LeakyReLU and
  linear heads (hippocampus: H = D = 10 x neurons, two hidden layers); the decoder
  mirrors it with a linear output.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from mmvm.config import ModalitySpec


class ResBlock(nn.Module):
    """x + conv(act(conv(act(x)))) at constant width and resolution."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ConvEncoder(nn.Module):
    def __init__(self, channels: int, width: int, latent_dim: int) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), ResBlock(w),  # (w, 28, 28)
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), ResBlock(2 * w),  # (2w, 14, 14)
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1), ResBlock(4 * w),  # (4w, 7, 7)
            nn.SiLU(), nn.Flatten(),
        )
        self.mu = nn.Linear(4 * w * 49, latent_dim)
        self.logvar = nn.Linear(4 * w * 49, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x)
        return self.mu(h), self.logvar(h)


class ConvDecoder(nn.Module):
    def __init__(self, channels: int, width: int, latent_dim: int) -> None:
        super().__init__()
        w = width
        self.fc = nn.Linear(latent_dim, 4 * w * 49)
        self.body = nn.Sequential(
            nn.Unflatten(1, (4 * w, 7, 7)), ResBlock(4 * w),
            nn.SiLU(), nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1), ResBlock(2 * w),
            nn.SiLU(), nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), ResBlock(w),
            nn.SiLU(), nn.Conv2d(w, channels, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.body(self.fc(z))


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.LeakyReLU()]
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    def __init__(self, shape: tuple[int, ...], hidden: int, layers: int, latent_dim: int) -> None:
        super().__init__()
        d_in = math.prod(shape)
        self.body = nn.Sequential(nn.Flatten(), _mlp([d_in] + [hidden] * layers))
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.mu(h), self.logvar(h)


class MLPDecoder(nn.Module):
    def __init__(self, shape: tuple[int, ...], hidden: int, layers: int, latent_dim: int) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.body = nn.Sequential(
            _mlp([latent_dim] + [hidden] * layers), nn.Linear(hidden, math.prod(shape))
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z).reshape(z.shape[0], *self.shape)


def build_encoder(spec: ModalitySpec, latent_dim: int) -> nn.Module:
    if spec.kind == "image":
        return ConvEncoder(spec.shape[0], spec.width, latent_dim)
    hidden = spec.width or math.prod(spec.shape)
    return MLPEncoder(spec.shape, hidden, spec.layers, latent_dim)


def build_decoder(spec: ModalitySpec, latent_dim: int) -> nn.Module:
    if spec.kind == "image":
        return ConvDecoder(spec.shape[0], spec.width, latent_dim)
    hidden = spec.width or math.prod(spec.shape)
    return MLPDecoder(spec.shape, hidden, spec.layers, latent_dim)
