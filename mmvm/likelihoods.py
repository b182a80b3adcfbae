"""Decoder likelihoods log p(x | decoder output), summed over a modality's dimensions.

Each likelihood maps (x [B, ...], out [B, ...]) to a log-likelihood [B] with its
normaliser included, so reconstruction errors are comparable across methods:

- ``laplace``: Laplace(loc=out, scale) with fixed scale (0.75 for images in the paper);
- ``gaussian``: Normal(loc=out, scale) with fixed scale; ``mse`` is the summed squared
  error -sum (x - out)^2, what the hippocampus code optimises;
- ``categorical``: out holds logits [B, positions, classes], x class indices
  [B, positions] (or one-hot [B, positions, classes]).
"""

from __future__ import annotations

import math
from typing import Callable

import torch.nn.functional as F
from torch import Tensor

LogLikelihood = Callable[[Tensor, Tensor, float], Tensor]
_LIKELIHOODS: dict[str, LogLikelihood] = {}


def register(name: str) -> Callable[[LogLikelihood], LogLikelihood]:
    def add(fn: LogLikelihood) -> LogLikelihood:
        _LIKELIHOODS[name] = fn
        return fn

    return add


def get_likelihood(name: str) -> LogLikelihood:
    try:
        return _LIKELIHOODS[name]
    except KeyError:
        raise ValueError(
            f"unknown likelihood {name!r}; choose one of {sorted(_LIKELIHOODS)}"
        ) from None


def _flat_sum(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


@register("laplace")
def laplace(x: Tensor, out: Tensor, scale: float = 0.75) -> Tensor:
    """log Laplace(x | out, b) = -|x - out| / b - log(2b), summed."""
    return _flat_sum(-(x - out).abs() / scale - math.log(2.0 * scale))


@register("gaussian")
def gaussian(x: Tensor, out: Tensor, scale: float = 1.0) -> Tensor:
    """log N(x | out, s^2) = -(x - out)^2 / (2 s^2) - log s - log(2 pi) / 2, summed."""
    return _flat_sum(
        -((x - out) ** 2) / (2.0 * scale**2) - math.log(scale) - 0.5 * math.log(2 * math.pi)
    )


@register("mse")
def mse(x: Tensor, out: Tensor, scale: float = 1.0) -> Tensor:
    """Negative summed squared error (an unnormalised Gaussian)."""
    return _flat_sum(-((x - out) ** 2))


@register("categorical")
def categorical(x: Tensor, out: Tensor, scale: float = 1.0) -> Tensor:
    """log Categorical(x | softmax(out)) summed over positions; out [B, P, C]."""
    logp = F.log_softmax(out, dim=-1)
    if x.dim() == out.dim():  # one-hot or soft targets
        return _flat_sum((x * logp).sum(-1))
    return _flat_sum(logp.gather(-1, x.long().unsqueeze(-1)).squeeze(-1))
