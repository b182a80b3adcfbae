"""Value ranges of the experiment config, checked after types: a bad value fails at
load time (naming the key) instead of deep inside training (``checkpoint_every = 0``
divided by zero, ``beta = inf`` a loss of inf at step 0, ``out_dir = ""`` a checkpoint
written over the current folder's)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

# the batch order derives generator seeds as seed * 100_003 + epoch (+ 7_919), which
# torch's manual_seed takes up to 2**64 - 1: the largest seed that leaves room for
# 2**33 epochs and offsets (a seed near 2**63 overflowed it at the first epoch)
MAX_SEED = (2**64 - 2**33) // 100_003
MAX_THREADS = 1024

# key -> (predicate, requirement)
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.root": (lambda v: bool(v.strip()),
                  "the folder of train.parquet / test.parquet (\".\" for the current one; "
                  "an empty one read the current folder unasked)"),
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
    "train.seed": (lambda v: 0 <= v <= MAX_SEED,
                   f"in 0..{MAX_SEED} (derived generator seeds must fit 64 bits)"),
    "train.checkpoint_every": (lambda v: v >= 1, ">= 1"),
    # torch.set_num_threads(10**8) segfaults in OpenMP
    "train.num_threads": (lambda v: 0 <= v <= MAX_THREADS,
                          f"in 0..{MAX_THREADS} (0: torch's default)"),
    "train.grad_clip": (lambda v: v >= 0, ">= 0 (0: no clipping)"),
    "train.out_dir": (lambda v: bool(v.strip()),
                      "a folder, e.g. \"runs/my-run\" (an empty one would write the "
                      "run's checkpoint.pt into the current folder)"),
    "eval.probe_train": (lambda v: v >= 1, ">= 1"),
    "eval.classifier_epochs": (lambda v: v >= 0, ">= 0"),
    "eval.classifier_min_image_steps": (lambda v: v >= 0, ">= 0"),
    "eval.classifier_shift": (lambda v: v >= 0, ">= 0"),
    "eval.classifier_width": (lambda v: v >= 1, ">= 1"),
    "eval.classifier_rotate": (lambda v: 0 <= v <= 180, "in [0, 180]"),
    "eval.classifier_members": (lambda v: v >= 1, ">= 1"),
    "eval.classifier_batch_size": (lambda v: v >= 1, ">= 1"),
    "eval.classifier_lr": (lambda v: 0 < v < float("inf"), "> 0"),
    "eval.batch_size": (lambda v: v >= 1, ">= 1"),
}

# the devices mmvm.training.resolve_device knows (as a site's node config's `device`)
DEVICES = "auto, cpu, cuda, cuda:<n> or mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device_problem(name: str) -> str | None:
    """``"'tpu' is not a device; choose ..."`` when ``name`` is not one of
    :data:`DEVICES` (spelled exactly so: torch refuses ``CPU``), else None."""
    if _DEVICE.fullmatch(name):
        return None
    near = name.strip().lower()
    hint = f"; did you mean {near!r}?" if _DEVICE.fullmatch(near) else ""
    return f"{name!r} is not a device; choose {DEVICES}{hint}"


def range_problem(cfg) -> str | None:
    """``"train.lr must be > 0, got 0.0"`` for the first value of ``cfg`` (an
    :class:`mmvm.config.ExperimentConfig`) that is not finite or out of its range, or
    an unknown ``train.device``; None when all are fine."""
    problem = _non_finite(cfg)
    if problem:
        return problem
    for key, (ok, requirement) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not ok(value):
            return f"{key} must be {requirement}, got {value!r}"
    device = device_problem(cfg.train.device)
    return f"train.device = {device}" if device else None


def _non_finite(cfg) -> str | None:
    """The first float setting that is inf or nan (TOML reads ``inf`` and ``nan``;
    ``beta = inf`` passes ``>= 0`` and ``scale = nan`` every comparison)."""
    tables = [(name, getattr(cfg, name)) for name in ("data", "model", "train", "eval")]
    tables += [(f"model.modalities.{m.name}", m) for m in cfg.model.modalities]
    for prefix, table in tables:
        for f in dataclasses.fields(table):
            value = getattr(table, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                return f"{prefix}.{f.name} must be a finite number, got {value!r}"
    return None
