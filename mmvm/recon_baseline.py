"""A reconstruction's floor: the test NLL of one constant "reconstruction" for every
sample, the best a decoder that ignores its input can do: the training data's
per-position median under a Laplace likelihood (its maximum-likelihood location),
the mean under Gaussian and squared error, the mean's logit (Bernoulli) or log
(Poisson). A probe is read against chance; a reconstruction NLL of 1846 means
nothing until it is read against this (64 px X-rays after 10 epochs: 1843.5 against
the mean image's 1845.1, walkthrough of 2026-12-05).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmvm.subsample import keep_rows

BASELINE_ROWS = 256  # training rows the constant is estimated from


def constant_output(likelihood: str, x: Tensor) -> Tensor | None:
    """The one decoder output (``[1, *shape]``) that best fits rows ``x`` under
    ``likelihood``; None where there is none here (categorical tokens)."""
    if likelihood == "laplace":
        return x.median(0, keepdim=True).values
    mean = x.mean(0, keepdim=True)
    if likelihood in ("gaussian", "mse"):
        return mean
    if likelihood == "bernoulli":
        return torch.logit(mean.clamp(1e-4, 1 - 1e-4))
    if likelihood == "poisson":
        return mean.clamp_min(1e-6).log()
    return None


@torch.no_grad()
def baseline_nll(model, train_set, test_set, batch_size: int = 256) -> dict[str, float]:
    """Per modality: the mean weighted test NLL, ``-w_m log p(x_m | c_m)``, of the
    constant ``c_m`` fitted on (up to :data:`BASELINE_ROWS` of) ``train_set``'s rows
    of ``m``; the same estimator as the model's reconstruction NLL, with the decoder
    replaced by the constant."""
    b = train_set.batch(keep_rows(len(train_set), BASELINE_ROWS))
    consts = {}
    for j, name in enumerate(model.names):
        have = b["mask"][:, j].bool()
        const = constant_output(model.specs[name].likelihood,
                                b["x"][name][have].float()) if bool(have.any()) else None
        if const is not None:
            consts[name] = (j, const, float(model.likelihood_weights[j]))
    totals = {name: [0.0, 0] for name in consts}
    for start in range(0, len(test_set) if consts else 0, batch_size):  # one pass
        t = test_set.batch(torch.arange(start, min(start + batch_size, len(test_set))))
        for name, (j, const, weight) in consts.items():
            present = t["mask"][:, j].bool()
            if bool(present.any()):
                x = t["x"][name][present].float()
                ll = model.log_likelihood(name, x, const.expand(len(x), *const.shape[1:]))
                totals[name][0] -= weight * float(ll.sum())
                totals[name][1] += len(x)
    return {name: total / count if count else math.nan
            for name, (total, count) in totals.items()}
