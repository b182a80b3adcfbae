"""``conv28``: the default image network for [C, 28, 28] (PolyMNIST look-alike).

A residual conv net 28 -> 14 -> 7 (docs/protocol.md, "The paper's settings"), widths ``w, 2w, 4w``
(``w`` = the spec's ``width``); linear heads from the ``4w x 7 x 7`` features to mu
and logvar. The decoder mirrors it and ends in a sigmoid (pixel values lie in
[0, 1]). SiLU activations and strided convolutions: this is the project's own
network, not the authors' (that one is ``polymnist_resnet``); it is kept unchanged,
parameter creation order included, so seeded runs reproduce bit for bit.
"""

from __future__ import annotations

from torch import Tensor, nn

from mmvm.networks.registry import Network, register_network


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


@register_network("conv28")
class Conv28(Network):
    """The residual conv net 28 -> 14 -> 7 (the project's first image network).

    ``layers`` is not used (2 is kept as its default, the value every run config
    written before the registry holds).
    """

    kinds = ("image",)
    takes = "[C, 28, 28]"
    default_layers = 2

    @staticmethod
    def accepts(shape: tuple[int, ...]) -> bool:
        return len(shape) == 3 and shape[1:] == (28, 28)

    @classmethod
    def encoder(cls, spec, latent_dim: int) -> nn.Module:
        return ConvEncoder(spec.shape[0], spec.width, latent_dim)

    @classmethod
    def decoder(cls, spec, latent_dim: int) -> nn.Module:
        return ConvDecoder(spec.shape[0], spec.width, latent_dim)
