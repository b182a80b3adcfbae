"""The coherence judges' architectures (:mod:`mmvm.classifiers` trains and caches
them): a small CNN for images, an MLP for vectors, a 1-D CNN for token sequences,
and an ensemble that averages their log-probabilities."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ImageClassifier(nn.Module):
    def __init__(self, channels: int, n_classes: int, width: int = 32) -> None:
        super().__init__()
        w = width

        def stage(a: int, b: int) -> list[nn.Module]:
            return [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
                    nn.Conv2d(b, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
                    nn.MaxPool2d(2)]

        self.net = nn.Sequential(
            *stage(channels, w),  # (w, 14, 14)
            *stage(w, 2 * w),  # (2w, 7, 7)
            *stage(2 * w, 4 * w),  # (4w, 3, 3)
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(0.2),
            nn.Linear(4 * w, n_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (28, 28):  # the stages are sized for 28x28 inputs
            x = nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
        return self.net(x)


class VectorClassifier(nn.Module):
    def __init__(self, shape: Sequence[int], n_classes: int, width: int = 128) -> None:
        super().__init__()
        d = math.prod(shape)
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, n_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TokenClassifier(nn.Module):
    """Token ids ``[B, P]`` (float or int) -> class logits; ids outside the vocabulary
    are clipped to it (generations never produce them, real data is checked)."""

    def __init__(self, vocab: int, n_classes: int, width: int = 128) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, width)
        self.conv = nn.Sequential(
            nn.Conv1d(width, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(width, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        ids = x.long().clamp(0, self.vocab - 1)
        h = self.conv(self.embed(ids).transpose(1, 2))  # (B, width, P)
        return self.head(h.amax(-1))


class Ensemble(nn.Module):
    """Judges that vote by their mean log-probability per class."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        logp = torch.stack([m(x).log_softmax(-1) for m in self.members])
        return logp.mean(0)


def build_classifier(shape: Sequence[int], n_classes: int, width: int,
                     vocab: int = 0, members: int = 1) -> nn.Module:
    """Token classifier when ``vocab`` (a tokens modality's vocabulary size) is
    given; else a CNN for ``[C, H, W]`` images with C in {1, 3}, an MLP otherwise;
    an :class:`Ensemble` of ``members`` of them when that is more than one."""
    if members > 1:
        return Ensemble([build_classifier(shape, n_classes, width, vocab)
                         for _ in range(members)])
    shape = tuple(int(s) for s in shape)
    if vocab:
        return TokenClassifier(vocab, n_classes, max(8 * width, 64))
    if len(shape) == 3 and shape[0] in (1, 3):
        return ImageClassifier(shape[0], n_classes, width)
    return VectorClassifier(shape, n_classes, max(8 * width, 64))
