"""Decoder likelihoods log p(x | decoder output), summed over a modality's dimensions.

Each likelihood maps (x [B, ...], out [B, ...]) to a log-likelihood [B] with its
normaliser included, so reconstruction errors are comparable across methods:

- ``laplace``: Laplace(loc=out, scale) with fixed scale (0.75 for images in the paper);
- ``gaussian``: Normal(loc=out, scale) with fixed scale; ``mse`` is the summed squared
  error -sum (x - out)^2, what the hippocampus code optimises;
- ``categorical``: out holds logits [B, positions, classes], x class indices
  [B, positions] (or one-hot [B, positions, classes]);
- ``bernoulli``: out holds logits, x values in {0, 1} (or probabilities) of the same
  shape (CelebA's 40 attributes);
- ``poisson``: out holds log-rates, x non-negative counts (spike counts):
  x out - e^out - log x!, summed.

:func:`likelihood_mean` maps a decoder output to a point in data space, what a
generated sample is compared and plotted as: the location for laplace / gaussian /
mse, sigmoid(logits) for bernoulli, the rate e^out for poisson, the most likely class
index for categorical (the float token ids the data stores).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LogLikelihood = Callable[[Tensor, Tensor, float], Tensor]
Mean = Callable[[Tensor], Tensor]
_LIKELIHOODS: dict[str, LogLikelihood] = {}
_MEANS: dict[str, Mean] = {}


def _location(out: Tensor) -> Tensor:
    return out


def register(name: str, mean: Mean = _location) -> Callable[[LogLikelihood], LogLikelihood]:
    """Add a log-likelihood as ``name``; ``mean`` maps its decoder output to data space."""

    def add(fn: LogLikelihood) -> LogLikelihood:
        _LIKELIHOODS[name] = fn
        _MEANS[name] = mean
        return fn

    return add


def get_likelihood(name: str) -> LogLikelihood:
    try:
        return _LIKELIHOODS[name]
    except KeyError:
        raise ValueError(
            f"unknown likelihood {name!r}; choose one of {sorted(_LIKELIHOODS)}"
        ) from None


def likelihood_mean(name: str) -> Mean:
    """The map from decoder output to a point in data space (see the module doc)."""
    get_likelihood(name)
    return _MEANS[name]


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


def _mode(out: Tensor) -> Tensor:
    return out.argmax(-1).float()


@register("categorical", mean=_mode)
def categorical(x: Tensor, out: Tensor, scale: float = 1.0) -> Tensor:
    """log Categorical(x | softmax(out)) summed over positions; out [B, P, C]."""
    logp = F.log_softmax(out, dim=-1)
    if x.dim() == out.dim():  # one-hot or soft targets
        return _flat_sum((x * logp).sum(-1))
    return _flat_sum(logp.gather(-1, x.long().unsqueeze(-1)).squeeze(-1))


@register("bernoulli", mean=torch.sigmoid)
def bernoulli(x: Tensor, out: Tensor, scale: float = 1.0) -> Tensor:
    """log Bernoulli(x | sigmoid(out)) = x out - log(1 + e^out), summed; out = logits."""
    return _flat_sum(-F.binary_cross_entropy_with_logits(out, x, reduction="none"))


MAX_LOG_RATE = 30.0  # e^30 ~ 1e13 counts: beyond any data, below float32's overflow


def _log_rate(out: Tensor) -> Tensor:
    """Log-rates in float32 (mixed precision keeps exp's precision), capped so that
    e^out stays finite."""
    return out.float().clamp(max=MAX_LOG_RATE)


def _rate(out: Tensor) -> Tensor:
    return _log_rate(out).exp()


@register("poisson", mean=_rate)
def poisson(x: Tensor, out: Tensor, scale: float = 1.0) -> Tensor:
    """log Poisson(x | e^out) = x out - e^out - log Gamma(x + 1), summed; out = log-rates."""
    log_rate, x = _log_rate(out), x.float()
    return _flat_sum(x * log_rate - log_rate.exp() - torch.lgamma(x + 1.0))
