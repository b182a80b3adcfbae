"""NaN and infinity in a model: the weights a checkpoint holds, the latents it gives.

A run that diverged must not pass for a trained model: :func:`nonfinite_tensor` names
the first weight tensor holding NaN or inf (a checkpoint is neither written nor loaded
with one), and :func:`finite_latents` stops an evaluation or an encoding at the first
batch whose posterior is not finite or overflows (huge but finite weights give such),
naming where the model came from, instead of a NaN error deep in scikit-learn or a
table of NaN latents.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn


class NonFiniteLatentError(ValueError):
    """A model's encoder gave NaN or infinite posteriors."""


def nonfinite_tensor(tensors: Mapping) -> str | None:
    """The name of the first tensor of ``tensors`` (a state dict) holding NaN or inf,
    with how many of its values do; None when all are finite."""
    for name, t in tensors.items():
        if torch.is_tensor(t) and (t.is_floating_point() or t.is_complex()):
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                return f"{name} ({bad} of its {t.numel()} values are NaN or infinite)"
    return None


# no trained posterior comes near (the prior is N(0, I)); beyond it, squares overflow
# float32 and a probe's standardization gives NaN
LATENT_LIMIT = 1e15


@contextlib.contextmanager
def finite_latents(model: nn.Module, source: str) -> Iterator[None]:
    """While the block runs, a mu or logvar from any of ``model``'s encoders
    (``model.encoders``) that is NaN, infinite or beyond :data:`LATENT_LIMIT` in
    magnitude raises :class:`NonFiniteLatentError` naming ``source`` (the checkpoint)
    and the modality."""

    def check(name: str):
        def hook(module, inputs, output) -> None:
            for what, t in zip(("mu", "logvar"), output, strict=False):
                if torch.is_tensor(t) and not bool((t.abs() <= LATENT_LIMIT).all()):
                    raise NonFiniteLatentError(
                        f"{source}: the model gives NaN, infinite or overflowing latents "
                        f"({what} of modality {name}, beyond {LATENT_LIMIT:g}): its "
                        f"training diverged before this checkpoint was written; train "
                        f"again with a lower train.lr, or with a train.grad_clip")
        return hook

    handles = [enc.register_forward_hook(check(name))
               for name, enc in model.encoders.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
