"""Value ranges of the experiment config, checked after types: a bad value fails at
load time (naming the key) instead of deep inside training (``checkpoint_every = 0``
divided by zero)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# key -> (predicate, requirement)
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.max_train": (lambda v: v >= 0, ">= 0"),
    "data.max_test": (lambda v: v >= 0, ">= 0"),
    "data.cache_row_groups": (lambda v: v >= 1, ">= 1"),
    "data.schedule_window": (lambda v: v >= 1, ">= 1"),
    "model.latent_dim": (lambda v: v >= 1, ">= 1"),
    "train.epochs": (lambda v: v >= 1, ">= 1"),
    "train.batch_size": (lambda v: v >= 1, ">= 1"),
    "train.lr": (lambda v: v > 0, "> 0"),
    "train.beta": (lambda v: v >= 0, ">= 0"),
    "train.alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.alpha_start": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.alpha_steps": (lambda v: v >= 1, ">= 1"),
    "train.seed": (lambda v: v >= 0, ">= 0"),
    "train.checkpoint_every": (lambda v: v >= 1, ">= 1"),
    "train.num_threads": (lambda v: v >= 0, ">= 0"),
    "train.grad_clip": (lambda v: v >= 0, ">= 0 (0: no clipping)"),
    "eval.probe_train": (lambda v: v >= 1, ">= 1"),
    "eval.classifier_epochs": (lambda v: v >= 0, ">= 0"),
    "eval.classifier_shift": (lambda v: v >= 0, ">= 0"),
    "eval.classifier_width": (lambda v: v >= 1, ">= 1"),
    "eval.classifier_rotate": (lambda v: 0 <= v <= 180, "in [0, 180]"),
    "eval.classifier_members": (lambda v: v >= 1, ">= 1"),
    "eval.batch_size": (lambda v: v >= 1, ">= 1"),
}


def range_problem(cfg) -> str | None:
    """``"train.lr must be > 0, got 0.0"`` for the first value of ``cfg`` (an
    :class:`mmvm.config.ExperimentConfig`) out of its range, or None."""
    for key, (ok, requirement) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not ok(value):
            return f"{key} must be {requirement}, got {value!r}"
    return None
