"""Numbers far from 0 (lab values in clinical units, raw sensor readings), and what
``mmvm data prepare --standardize`` does about them.

A vector modality's values go into an encoder as they are and come back as an
``mse`` / ``gaussian`` / ``laplace`` decoder's targets. Sodium at ~140 and platelets at
~250,000 in one table make the first step's loss overflow (NaN before any update:
no learning rate helps), or, a little smaller, one column outweigh every other in the
reconstruction. :func:`scales` finds each feature's mean and standard deviation over
the *training* split's rows (the test split never shapes them; read in blocks, so a
memory-mapped recording is never loaded whole), :func:`apply` z-scores a block of
rows with them as it is written, and both go into the files' metadata, so a value
can be mapped back (``x = z * std + mean``).
:func:`mmvm.data.value_ranges.far_from_zero` is the check that says when.

Each site standardizes with its own training rows unless it is given another's
scale (``--standardize-from``, the ``train.parquet`` of the site whose scale all
use): sites that hold the same modality (a horizontal or hybrid federation) should,
or their encoders see the same value differently scaled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from mmvm.data.store import DataError
from mmvm.data.value_ranges import far_from_zero, file_ranges

BLOCK = 4096  # rows read at a time
Scale = dict[str, list[float]]  # {"mean": [...], "std": [...]}, one value per feature


def scales(arrays: Mapping[str, np.ndarray], names: Sequence[str],
           train_rows: np.ndarray, images: Sequence[str] = (),
           given: Mapping[str, Scale] | None = None) -> dict[str, Scale]:
    """``{name: {"mean", "std"}}`` per feature of the modalities ``names`` over the
    rows ``train_rows`` (float64, in blocks), or ``given``'s for those it holds
    (another site's, checked against the feature count). A feature (near) constant
    over the training rows keeps std 1: its values become their difference from
    that constant, not a division by rounding noise. Images are refused: their
    decoders take pixels in 0..1."""
    unknown = [m for m in names if m not in arrays]
    if unknown:
        raise DataError(f"--standardize {', '.join(unknown)}: no such modality "
                        f"(modalities: {', '.join(arrays)})")
    pictures = [m for m in names if m in images]
    if pictures:
        raise DataError(f"--standardize {', '.join(pictures)}: images keep pixels in "
                        f"0..1, which their decoders (a sigmoid) produce")
    out = {}
    for m in names:
        features = int(np.prod(arrays[m].shape[1:], dtype=np.int64))
        if given and m in given:
            out[m] = _checked(given[m], m, features)
        elif len(train_rows):  # else the preparer refuses the empty split
            out[m] = _moments(arrays[m], train_rows, features)
    return out


def _moments(a: np.ndarray, rows: np.ndarray, features: int) -> Scale:
    shift = np.asarray(a[rows[:1]], np.float64).reshape(features)  # sums of x - x0
    s1, s2 = np.zeros(features), np.zeros(features)
    lo, hi = np.full(features, np.inf), np.full(features, -np.inf)
    for start in range(0, len(rows), BLOCK):
        x = np.asarray(a[rows[start:start + BLOCK]], np.float64).reshape(-1, features)
        d = x - shift
        s1 += d.sum(0)
        s2 += (d * d).sum(0)
        lo, hi = np.minimum(lo, x.min(0)), np.maximum(hi, x.max(0))
    n = len(rows)
    mean = shift + s1 / n
    std = np.sqrt(np.maximum(s2 / n - (s1 / n) ** 2, 0.0))
    flat = ~(hi > lo) | (std <= 1e-7 * np.maximum(1.0, np.abs(mean)))  # NaN: flat
    return {"mean": mean.tolist(), "std": np.where(flat, 1.0, std).tolist()}


def _checked(scale: Scale, name: str, features: int) -> Scale:
    mean, std = (np.asarray(scale.get(k, []), np.float64) for k in ("mean", "std"))
    if mean.shape != (features,) or std.shape != (features,) or \
            not (np.isfinite(mean).all() and (std > 0).all() and np.isfinite(std).all()):
        raise DataError(f"--standardize-from: its scale of {name} does not fit: "
                        f"{len(mean)} means and {len(std)} standard deviations (finite, "
                        f"std > 0) for this {name}'s {features} features")
    return {"mean": mean.tolist(), "std": std.tolist()}


def apply(block: np.ndarray, scale: Scale) -> np.ndarray:
    """Rows ``block`` ``[n, *shape]`` z-scored by ``scale``, as float32."""
    mean, std = (np.asarray(scale[k], np.float64) for k in ("mean", "std"))
    flat = np.asarray(block, np.float64).reshape(len(block), -1)
    return ((flat - mean) / std).reshape(block.shape).astype(np.float32)


def scale_of(path: str | os.PathLike) -> dict[str, Scale]:
    """The scales a prepared site file was standardized with (``--standardize-from``)."""
    from mmvm.data.store import read_site_meta

    got = (read_site_meta(path).get("dataset") or {}).get("standardized")
    if not got:
        raise DataError(f"{path}: not prepared with --standardize (its metadata holds "
                        f"no dataset.standardized scale to share)")
    return got


def scale_warnings(train_path) -> list[str]:
    """:func:`far_from_zero` for each vector modality of a written training file
    that was not standardized (values from the Parquet statistics: no row read)."""
    from mmvm.data.store import read_site_meta

    meta = read_site_meta(train_path)
    done = (meta.get("dataset") or {}).get("standardized") or {}
    ranges = file_ranges(train_path)
    lines = [far_from_zero(m, *ranges[m]) for m, t in meta["tensors"].items()
             if t["dtype"] != "uint8" and m not in done and m in ranges]
    return [f"warning: {line}" for line in lines if line]
