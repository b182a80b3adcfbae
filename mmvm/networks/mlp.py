"""The vector networks (hippocampus spike counts, CelebA attributes; any shape).

``mlp``: an MLP ``D -> H -> ... -> H`` (``layers`` hidden layers, default 2) with
LeakyReLU and linear heads H -> latent to mu and logvar; the decoder mirrors it with
a linear output of the input's shape. ``width`` = H, and 0 means H = D, the input size.

``hippocampus_mlp``: the hippocampus authors' per-rat network exactly
(yangmeng96/mmvmvae-hippocampal ``networks/NetworksRatsspike.py``): the encoder runs
``D -> H -> H -> latent`` with a LeakyReLU after every layer, the last included, then
heads latent -> latent, so mu and logvar pass a latent-sized bottleneck (2 units for
the rats); the decoder is ``mlp``'s (latent -> H -> H -> D), which is theirs.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from mmvm.networks.registry import Network, register_network


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.LeakyReLU()]
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    def __init__(self, shape: tuple[int, ...], hidden: int, layers: int, latent_dim: int,
                 bottleneck: bool = False) -> None:
        super().__init__()
        sizes = [math.prod(shape)] + [hidden] * layers + ([latent_dim] if bottleneck else [])
        self.body = nn.Sequential(nn.Flatten(), _mlp(sizes))
        self.mu = nn.Linear(sizes[-1], latent_dim)
        self.logvar = nn.Linear(sizes[-1], latent_dim)

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



@register_network("mlp")
class MLP(Network):
    """Fully connected encoder/decoder for a vector modality of any shape."""

    kinds = ("vector",)
    takes = "any shape (flattened)"
    default_layers = 2
    min_width = 0  # 0 = hidden units equal to the input size

    @staticmethod
    def accepts(shape: tuple[int, ...]) -> bool:
        return len(shape) >= 1

    @classmethod
    def encoder(cls, spec, latent_dim: int) -> nn.Module:
        hidden = spec.width or math.prod(spec.shape)
        return MLPEncoder(spec.shape, hidden, cls.depth(spec), latent_dim)

    @classmethod
    def decoder(cls, spec, latent_dim: int) -> nn.Module:
        hidden = spec.width or math.prod(spec.shape)
        return MLPDecoder(spec.shape, hidden, cls.depth(spec), latent_dim)


@register_network("hippocampus_mlp")
class HippocampusMLP(MLP):
    """The hippocampus authors' per-rat MLP: ``mlp`` with a LeakyReLU'd latent-sized
    layer before the encoder's heads (see the module)."""

    @classmethod
    def encoder(cls, spec, latent_dim: int) -> nn.Module:
        hidden = spec.width or math.prod(spec.shape)
        return MLPEncoder(spec.shape, hidden, cls.depth(spec), latent_dim, bottleneck=True)
