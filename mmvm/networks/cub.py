"""``cub_image`` and ``cub_text``: the authors' CUB image-caption networks.

As ``networks/NetworksCUBimg.py`` and ``networks/NetworksCUBsent.py`` of
thomassutter/mmvmvae (from MMVAE+), ``w`` = the spec's ``width``:

- ``cub_image`` ([C, 64, 64], paper w = 64): ``Conv(k4, s2, p1) + ReLU`` four times,
  ``C -> w -> 2w -> 4w -> 8w``, 64 -> 4; mu and logvar ``Conv(8w -> D, k4)`` each.
  Decoder ``ConvT(D -> 8w, k4) + ReLU`` -> 4; ``ConvT(k4, s2, p1) + ReLU``
  ``8w -> 4w -> 2w -> w`` -> 32; ``ConvT(w -> C, k4, s2, p1)`` -> 64 and a sigmoid
  (the authors' decoder; the Laplace location then lies in [0, 1]).
- ``cub_text`` (kind ``tokens``, [32] token ids, paper w = 32): ``Embedding(V, 128)``
  -> ``(1, 32, 128)``; bias-free convs, each followed by BatchNorm and ReLU:
  ``1 -> w`` (k4, s2, p1) -> 16 x 64; ``w -> 2w`` -> 8 x 32; ``2w -> 4w`` -> 4 x 16;
  ``4w -> 4w`` (k (1, 4), s (1, 2), p (0, 1)) twice -> 4 x 8 -> 4 x 4; mu and logvar
  bias-free ``Conv(4w -> D, k4)``. The decoder mirrors it back to ``(1, 32, 128)``
  (the last transposed conv followed by ReLU only, no BatchNorm, as theirs), then
  ``Linear(128 -> V)`` per position: logits ``[B, 32, V]`` for the ``categorical``
  likelihood.

V = the spec's ``classes``: the vocabulary size of the prepared data (the length of
``vocab`` in the file's ``mmvm.dataset`` metadata, see ``mmvm.data.prepare.cub``).
The embedding's padding index is our ``<pad>`` (id 1); the authors pass
``padding_idx=0``, which in their vocabulary and ours is ``<exc>``, the
unknown-word token. An id outside ``[0, V)`` raises a :class:`ValueError` naming the
modality and the ``classes`` key, at the first batch.
"""

from __future__ import annotations

from torch import Tensor, nn

from mmvm.networks.registry import Network, register_network

PAD = 1  # the id mmvm.data.prepare.cub gives <pad>
EMBED = 128  # embedding size (the authors'); also the decoder's width per position
POSITIONS = 32


# ------------------------------------------------------------------ image
class CubImageEncoder(nn.Module):
    def __init__(self, channels: int, width: int, latent_dim: int) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = []
        for a, b in ((channels, w), (w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w)):
            layers += [nn.Conv2d(a, b, 4, 2, 1), nn.ReLU()]
        self.enc = nn.Sequential(*layers)  # (8w, 4, 4)
        self.c1 = nn.Conv2d(8 * w, latent_dim, 4, 1, 0)
        self.c2 = nn.Conv2d(8 * w, latent_dim, 4, 1, 0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        e = self.enc(x)
        return self.c1(e).flatten(1), self.c2(e).flatten(1)  # (B, D) each


class CubImageDecoder(nn.Module):
    def __init__(self, channels: int, width: int, latent_dim: int) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, 8 * w, 4, 1, 0), nn.ReLU()]
        for a, b in ((8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w)):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1), nn.ReLU()]  # 8, 16, 32
        layers += [nn.ConvTranspose2d(w, channels, 4, 2, 1), nn.Sigmoid()]  # 64
        self.dec = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.dec(z[:, :, None, None])  # (B, C, 64, 64)


@register_network("cub_image")
class CubImage(Network):
    """The authors' CUB image encoder/decoder (paper width 64)."""

    kinds = ("image",)
    takes = "[C, 64, 64]"

    @staticmethod
    def accepts(shape: tuple[int, ...]) -> bool:
        return len(shape) == 3 and shape[1:] == (64, 64)

    @classmethod
    def encoder(cls, spec, latent_dim: int) -> nn.Module:
        return CubImageEncoder(spec.shape[0], spec.width, latent_dim)

    @classmethod
    def decoder(cls, spec, latent_dim: int) -> nn.Module:
        return CubImageDecoder(spec.shape[0], spec.width, latent_dim)


# ------------------------------------------------------------------ text
def _bn_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.ReLU()]


class CubTextEncoder(nn.Module):
    def __init__(self, vocab: int, width: int, latent_dim: int, name: str = "text") -> None:
        super().__init__()
        w, self.vocab, self.name = width, vocab, name
        self.embedding = nn.Embedding(vocab, EMBED, padding_idx=PAD)
        self.enc = nn.Sequential(
            *_bn_relu(nn.Conv2d(1, w, 4, 2, 1, bias=False), w),  # (w, 16, 64)
            *_bn_relu(nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False), 2 * w),  # (2w, 8, 32)
            *_bn_relu(nn.Conv2d(2 * w, 4 * w, 4, 2, 1, bias=False), 4 * w),  # (4w, 4, 16)
            *_bn_relu(nn.Conv2d(4 * w, 4 * w, (1, 4), (1, 2), (0, 1), bias=False), 4 * w),
            *_bn_relu(nn.Conv2d(4 * w, 4 * w, (1, 4), (1, 2), (0, 1), bias=False), 4 * w),
        )  # (4w, 4, 4)
        self.c1 = nn.Conv2d(4 * w, latent_dim, 4, 1, 0, bias=False)
        self.c2 = nn.Conv2d(4 * w, latent_dim, 4, 1, 0, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ids = x.long()
        if len(ids) and not ids.is_meta and (  # meta: sizing a step (mmvm.footprint)
                int(ids.min()) < 0 or int(ids.max()) >= self.vocab):
            raise ValueError(
                f"modality {self.name!r}: token ids must lie in [0, {self.vocab}), got "
                f"{int(ids.min())}..{int(ids.max())}; model.modalities.{self.name}.classes "
                f"must be the vocabulary size of the prepared data (len of 'vocab' in "
                f"its metadata)")
        e = self.enc(self.embedding(ids).unsqueeze(1))  # (B, 1, 32, 128) -> (B, 4w, 4, 4)
        return self.c1(e).flatten(1), self.c2(e).flatten(1)


class CubTextDecoder(nn.Module):
    def __init__(self, vocab: int, width: int, latent_dim: int) -> None:
        super().__init__()
        w = width
        self.dec = nn.Sequential(
            *_bn_relu(nn.ConvTranspose2d(latent_dim, 4 * w, 4, 1, 0, bias=False), 4 * w),
            *_bn_relu(nn.ConvTranspose2d(4 * w, 4 * w, (1, 4), (1, 2), (0, 1), bias=False),
                      4 * w),  # (4w, 4, 8)
            *_bn_relu(nn.ConvTranspose2d(4 * w, 4 * w, (1, 4), (1, 2), (0, 1), bias=False),
                      4 * w),  # (4w, 4, 16)
            *_bn_relu(nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False), 2 * w),  # 8 x 32
            *_bn_relu(nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False), w),  # 16 x 64
            nn.ConvTranspose2d(w, 1, 4, 2, 1, bias=False), nn.ReLU(),  # (1, 32, 128)
        )
        self.to_vocab = nn.Linear(EMBED, vocab)

    def forward(self, z: Tensor) -> Tensor:
        h = self.dec(z[:, :, None, None])  # (B, 1, 32, 128)
        return self.to_vocab(h.reshape(-1, EMBED)).reshape(len(z), POSITIONS, -1)  # (B, 32, V)


@register_network("cub_text")
class CubText(Network):
    """The authors' CUB caption encoder/decoder (paper width 32); ``classes`` = V."""

    kinds = ("tokens",)
    takes = f"[{POSITIONS}] token ids"

    @staticmethod
    def accepts(shape: tuple[int, ...]) -> bool:
        return tuple(shape) == (POSITIONS,)

    @classmethod
    def encoder(cls, spec, latent_dim: int) -> nn.Module:
        return CubTextEncoder(spec.classes, spec.width, latent_dim, spec.name)

    @classmethod
    def decoder(cls, spec, latent_dim: int) -> nn.Module:
        return CubTextDecoder(spec.classes, spec.width, latent_dim)
