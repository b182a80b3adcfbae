"""Each modality's values as the model sees them (stored value / the file's scale),
against the range its likelihood and network expect.

A file can hold valid values the model was not built for: uint8 pixels written with
scale 1 reach the model as 0..255, while an image decoder ends in a sigmoid (0..1) and
a Bernoulli likelihood takes targets in 0..1. Training on them runs, and learns
nothing useful, without a word. :func:`range_warnings` reads each tensor's minimum and
maximum from the Parquet statistics (the file's metadata: no row is read) and says
where they leave the expected range; :func:`unscaled_pixels` is what ``mmvm data
check`` can say without a config (uint8 stored with scale 1). Warnings, not errors: a
modality may be meant so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

FLOAT16_MAX = 65504.0  # train.amp = "fp16" casts the network's input to float16
LARGE = 100.0  # |value| beyond which a vector modality is called far from 0


def expected_range(spec) -> tuple[float, float, str] | None:
    """``(low, high, why)`` of the values a modality ``spec`` (a
    :class:`~mmvm.config.ModalitySpec`) expects, or None where any value goes (a
    vector with a laplace, gaussian or mse likelihood)."""
    if spec.likelihood == "categorical":
        top = spec.classes - 1
        return 0.0, float(top), f"token ids 0..{top} (classes = {spec.classes})"
    if spec.likelihood == "bernoulli":
        return 0.0, 1.0, "likelihood 'bernoulli' takes targets in 0..1"
    if spec.likelihood == "poisson":
        return 0.0, math.inf, "likelihood 'poisson' takes counts >= 0"
    if spec.kind == "image":
        return 0.0, 1.0, "kind 'image' takes pixels scaled to 0..1 (image decoders " \
                         "end in a sigmoid)"
    return None


def file_ranges(path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """Modality -> (min, max) of its values divided by the file's scale, from the
    Parquet statistics of every row group; a modality some row group has no
    statistics for is left out (unknown, never guessed)."""
    from mmvm.data.store import open_parquet, read_layout

    pf = open_parquet(path)
    layout = read_layout(pf, str(path))
    md = pf.metadata
    leaves = {md.schema.column(i).path: i for i in range(md.num_columns)}
    out = {}
    for name, spec in layout.specs.items():
        col = next((leaves[p] for p in (f"{name}.list.element", f"{name}.list.item")
                    if p in leaves), None)
        bounds = [_bounds(md.row_group(g).column(col)) for g in range(md.num_row_groups)
                  if md.row_group(g).num_rows] if col is not None else []
        if bounds and all(b is not None for b in bounds):
            out[name] = (min(b[0] for b in bounds) / spec["scale"],
                         max(b[1] for b in bounds) / spec["scale"])
    return out


def _bounds(chunk) -> tuple[float, float] | None:
    stats = chunk.statistics
    if stats is None or not stats.has_min_max:
        return None
    try:
        lo, hi = float(stats.min) + 0.0, float(stats.max) + 0.0  # Parquet's min -0.0
    except (TypeError, ValueError):
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and lo <= hi else None


def range_warnings(specs: Sequence, paths: str | os.PathLike | Sequence,
                   amp: str = "off") -> list[str]:
    """One line for each modality of ``specs`` in each file of ``paths`` whose values
    (stored / scale, from the Parquet statistics) leave the range
    :func:`expected_range` gives, or, under ``amp = "fp16"``, float16's."""
    from mmvm.data.store import read_site_meta

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    lines = []
    for p in paths:
        meta = read_site_meta(p)
        ranges, stored = file_ranges(p), meta["tensors"]
        scaled = (meta.get("dataset") or {}).get("standardized") or {}
        lines += [line for spec in specs if spec.name in ranges
                  for line in value_warnings(p, spec, stored[spec.name],
                                             *ranges[spec.name], amp,
                                             standardized=spec.name in scaled)]
    return lines


def value_warnings(path, spec, stored: dict, lo: float, hi: float,
                   amp: str = "off", standardized: bool = False) -> list[str]:
    """What is wrong with modality ``spec``'s values ``lo..hi`` (stored / scale) in
    ``path``, whose tensor is ``stored`` (``dtype``, ``scale``): outside
    :func:`expected_range`, or beyond float16 under ``amp = "fp16"``."""
    where = f"{path}: modality {spec.name!r} holds values {lo:.4g}..{hi:.4g}"
    lines = []
    expected = expected_range(spec)
    if expected and (lo < expected[0] or hi > expected[1]):
        fix = ("the file stores uint8 with scale 1: write it with scale 255 (the "
               "default for uint8), as mmvm data prepare does"
               if unscaled_pixels(spec.name, stored, hi) else
               "rescale the data, or write it with a scale that brings it there")
        lines.append(f"{where} (stored value / the file's scale), outside "
                     f"{expected[0]:g}..{expected[1]:g}: {expected[2]}; {fix}")
    if spec.likelihood == "poisson" and (odd := not_counts(path, spec.name)):
        lines.append(f"{path}: {odd}")
    if expected is None and not standardized and (  # z-scores beyond 100: heavy tails
            far := far_from_zero(f"modality {spec.name!r}", lo, hi)):
        lines.append(f"{path}: {far}")
    if amp == "fp16" and max(-lo, hi) > FLOAT16_MAX:
        lines.append(f"{where}, beyond float16's {FLOAT16_MAX:g}: train.amp = 'fp16' "
                     f"makes them inf; use amp = 'bf16' or 'off', or write the data "
                     f"with a larger scale")
    return lines


def not_counts(path, name: str, rows: int = 4096) -> str | None:
    """Why modality ``name`` in ``path`` is not counts, from its first ``rows`` rows
    (stored / scale): a value that is not a whole number, or None. A Poisson
    likelihood trains on firing rates in Hz or smoothed traces without a word, and
    fits them badly (a walkthrough's rat of rates: reconstruction 2564 where the
    others' counts gave 88-180, its probe below chance)."""
    import numpy as np

    from mmvm.data.store import iter_site_batches

    batch = next(iter_site_batches(path, [name], batch_size=rows), None)
    if batch is None:
        return None
    x = batch.tensors[name].astype(np.float64) / batch.scales[name]
    odd = np.flatnonzero((x != np.round(x)).reshape(len(x), -1).any(axis=1))
    if not len(odd):
        return None
    r = int(odd[0])
    value = next(v for v in x[r].ravel() if v != round(v))
    return (f"modality {name!r} holds values that are not whole numbers ({value:.4g} in "
            f"sample {batch.sample_ids[r]!r}; {len(odd)} of the first {len(x)} rows): "
            f"likelihood 'poisson' models counts. Firing rates (Hz) or smoothed traces "
            f"are not counts: give the binned spike counts, or use likelihood "
            f"'gaussian' with the data prepared with --standardize")


def far_from_zero(name: str, lo: float, hi: float) -> str | None:
    """The warning for a vector modality ``name`` whose values span ``lo..hi``
    beyond :data:`LARGE`, or None."""
    if not max(abs(lo), abs(hi)) > LARGE:  # NaN: no warning
        return None
    return (f"{name} holds values {lo:.4g}..{hi:.4g}, far from 0: inputs and "
            f"mse/gaussian/laplace targets that large make the first loss overflow (NaN at "
            f"step 0, whatever the learning rate) or one column outweigh the rest; "
            f"prepare it with --standardize (mmvm data prepare table or arrays: each "
            f"column z-scored by the training split's mean and std; whole-number "
            f"counts under a poisson likelihood may stay as they are)")


def unscaled_pixels(name: str, stored: dict, hi: float) -> str | None:
    """What ``mmvm data check`` says without a config of a uint8 tensor ``stored``
    with scale 1 whose values exceed 1: the model sees 0..255."""
    if stored["dtype"] != "uint8" or stored["scale"] != 1.0 or hi <= 1:
        return None
    return (f"modality {name!r} is uint8 stored with scale 1: the model sees values "
            f"0..{hi:g}; images and bernoulli targets are expected in 0..1 (scale 255, "
            f"the default for uint8); counts are fine as they are (check against a "
            f"config's likelihoods: --config)")
