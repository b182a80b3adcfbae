"""``res_image``: the authors' residual image network, CelebA (64) and MIMIC-CXR (224).

As ``FeatureExtractorImg`` / ``DataGeneratorImg`` / ``LinearFeatureCompressor`` of
thomassutter/mmvmvae (CelebA) and agostini335/mmvm-mimic (224 x 224), with
``f`` = the spec's ``width`` (paper: 64) and skip weights a = b = 1 (their configs):

- down block (``ResidualBlock2dConv``): ``BN -> ReLU -> Conv1x1(cin -> cin) -> Drop ->
  BN -> ReLU -> Conv k(cin -> cout, stride s, padding p) -> Drop`` (convs bias-free),
  plus the residual ``Conv k(cin -> cout, s, p) -> BN``; up blocks
  (``ResidualBlock2dTransposeConv``) the same with transposed convolutions.
- 64 x 64 encoder: ``Conv(C -> f, 3, s2, p2)`` -> 33; blocks ``f -> 2f -> 3f -> 4f``
  (k4, s2, p1) -> 16, 8, 4; ``4f -> 5f`` (k4, s2, p0) -> 1.
  224 x 224 encoder: ``Conv(C -> f, 3, s2, p1)`` -> 112; blocks ``f -> 2f -> 3f -> 4f``
  -> 56, 28, 14; ``4f -> 5f`` (k4, s4, p1) -> 4; ``5f -> 5f`` (k4, s2, p0) -> 1.
  Both: flatten ``5f``; bias-free linear heads to mu and logvar.
- decoder: ``Linear(D -> 5f)`` -> ``(5f, 1, 1)``; up blocks ``5f -> 4f`` (k4, s1, p0)
  -> 4; ``4f -> 3f -> 2f -> f`` (k4, s2, p1) -> 8, 16, 32; for 224 two more ``f -> f``
  -> 64, 128; last ``ConvTranspose(f -> C, 3, s2, p1, output_padding 1)`` -> 64, or
  for 224 ``(f -> C, 3, s2, p17, output_padding 1)``: (128 - 1) * 2 - 34 + 3 + 1 = 224.
  No final activation (the output is the Laplace location).

Differences from the authors, on purpose:

- **Dropout defaults to 0** (theirs: ``Dropout2d(0.5)`` twice per block), a
  constructor argument (``dropout=0.5`` gives theirs) and no config key. Dropout
  draws its masks from torch's global generator, which the project's runs never use
  (their noise comes from ``mmvm.noise``): with it a federated run could no longer
  reproduce the centralized one, and at CPU widths (f = 4..16) dropping half of a
  handful of channels mostly adds noise.
- ``layers`` = blocks per stage (default 1, theirs): the extra blocks keep channels
  and resolution (k3, s1, p1) with an identity residual.

BatchNorm on the 1 x 1 feature maps needs at least two samples per training batch;
a batch of one raises a :class:`ValueError` saying so (choose ``train.batch_size`` so
that the last batch of an epoch is not a single sample). :mod:`mmvm.model` runs a
network on a modality's present rows only; where one row of a training batch has the
modality, it runs that row in evaluation mode (running statistics) instead.
"""

from __future__ import annotations

from torch import Tensor, nn

from mmvm.networks.registry import Network, register_network

SIZES = (64, 224)
# (cin, cout, kernel, stride, padding) per block, in multiples of f
_DOWN = {64: [(1, 2, 4, 2, 1), (2, 3, 4, 2, 1), (3, 4, 4, 2, 1), (4, 5, 4, 2, 0)],
         224: [(1, 2, 4, 2, 1), (2, 3, 4, 2, 1), (3, 4, 4, 2, 1), (4, 5, 4, 4, 1),
               (5, 5, 4, 2, 0)]}
_UP = {64: [(5, 4, 4, 1, 0), (4, 3, 4, 2, 1), (3, 2, 4, 2, 1), (2, 1, 4, 2, 1)],
       224: [(5, 4, 4, 1, 0), (4, 3, 4, 2, 1), (3, 2, 4, 2, 1), (2, 1, 4, 2, 1),
             (1, 1, 4, 2, 1), (1, 1, 4, 2, 1)]}
_STEM = {64: 2, 224: 1}  # padding of the first conv
_LAST = {64: 1, 224: 17}  # padding of the last transposed conv


def _drop(p: float) -> nn.Module:
    return nn.Dropout2d(p) if p > 0 else nn.Identity()


class ResidualBlock(nn.Module):
    """Pre-activation residual block; ``transpose`` uses transposed convolutions.

    ``project`` puts ``conv k(cin -> cout, s, p) -> BN`` on the residual path (the
    block changes channels or resolution), else the residual is the identity.
    """

    def __init__(self, cin: int, cout: int, k: int, s: int, p: int, *,
                 transpose: bool = False, project: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        conv = nn.ConvTranspose2d if transpose else nn.Conv2d
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), conv(cin, cin, 1, bias=False), _drop(dropout),
            nn.BatchNorm2d(cin), nn.ReLU(), conv(cin, cout, k, s, p, bias=False),
            _drop(dropout))
        self.residual = nn.Sequential(conv(cin, cout, k, s, p), nn.BatchNorm2d(cout)) \
            if project else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.body(x)


def _blocks(plan, f: int, blocks: int, transpose: bool, dropout: float) -> list[nn.Module]:
    out: list[nn.Module] = []
    for a, b, k, s, p in plan:
        out.append(ResidualBlock(a * f, b * f, k, s, p, transpose=transpose,
                                 dropout=dropout))
        out += [ResidualBlock(b * f, b * f, 3, 1, 1, transpose=transpose, project=False,
                              dropout=dropout) for _ in range(blocks - 1)]
    return out


def _check_batch(module: nn.Module, x: Tensor) -> None:
    if module.training and x.shape[0] < 2:
        raise ValueError("res_image: BatchNorm on 1 x 1 feature maps needs at least 2 "
                         "samples per training batch, got 1; choose train.batch_size so "
                         "that no batch holds a single sample")


class ResImageEncoder(nn.Module):
    def __init__(self, channels: int, size: int, width: int, latent_dim: int,
                 blocks: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        f = width
        self.features = nn.Sequential(
            nn.Conv2d(channels, f, 3, stride=2, padding=_STEM[size], bias=False),
            *_blocks(_DOWN[size], f, blocks, False, dropout),  # (5f, 1, 1)
            nn.Flatten())
        self.mu = nn.Linear(5 * f, latent_dim, bias=False)
        self.logvar = nn.Linear(5 * f, latent_dim, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_batch(self, x)
        h = self.features(x)  # (B, 5f)
        return self.mu(h), self.logvar(h)


class ResImageDecoder(nn.Module):
    def __init__(self, channels: int, size: int, width: int, latent_dim: int,
                 blocks: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        f = width
        self.fc = nn.Linear(latent_dim, 5 * f)
        self.body = nn.Sequential(
            nn.Unflatten(1, (5 * f, 1, 1)),
            *_blocks(_UP[size], f, blocks, True, dropout),  # (f, size / 2, size / 2)
            nn.ConvTranspose2d(f, channels, 3, stride=2, padding=_LAST[size],
                               output_padding=1))

    def forward(self, z: Tensor) -> Tensor:
        _check_batch(self, z)
        return self.body(self.fc(z))  # (B, C, size, size)


@register_network("res_image")
class ResImage(Network):
    """The authors' CelebA / MIMIC-CXR residual network (paper width 64)."""

    kinds = ("image",)
    takes = "[C, 64, 64] or [C, 224, 224] (no other size)"

    @staticmethod
    def accepts(shape: tuple[int, ...]) -> bool:
        return len(shape) == 3 and shape[1] == shape[2] and shape[1] in SIZES

    @classmethod
    def encoder(cls, spec, latent_dim: int) -> nn.Module:
        c, size, _ = spec.shape
        return ResImageEncoder(c, size, spec.width, latent_dim, cls.depth(spec))

    @classmethod
    def decoder(cls, spec, latent_dim: int) -> nn.Module:
        c, size, _ = spec.shape
        return ResImageDecoder(c, size, spec.width, latent_dim, cls.depth(spec))
