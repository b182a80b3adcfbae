"""Numbers far from 0 (lab values in clinical units, raw sensor readings), and what
``mmvm data prepare --standardize`` does about them.

A vector modality's values go into an encoder as they are and come back as an
``mse`` / ``gaussian`` / ``laplace`` decoder's targets. Sodium at ~140 and platelets at
~250,000 in one table make the first step's loss overflow (NaN before any update:
no learning rate helps), or, a little smaller, one column outweigh every other in the
reconstruction. :func:`standardized` z-scores each feature by the mean and standard
deviation of the *training* split's rows (the test split never shapes them) and
returns both for the files' metadata, so a value can be mapped back
(``x = z * std + mean``). :func:`mmvm.data.value_ranges.far_from_zero` is the
check that says when.

Each site standardizes with its own training rows. Sites that hold the same modality
(a horizontal or hybrid federation) then see differently scaled inputs for it: agree
on one scale before preparing (e.g. the clinical reference ranges), or accept it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mmvm.data.store import DataError
from mmvm.data.value_ranges import far_from_zero, file_ranges


def standardized(arrays: Mapping[str, np.ndarray], names: Sequence[str],
                 train_rows: np.ndarray, images: Sequence[str] = ()
                 ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, list[float]]]]:
    """``arrays`` with the modalities ``names`` z-scored per feature by the rows
    ``train_rows`` (float32), and ``{name: {"mean": [...], "std": [...]}}`` (flat,
    one value per feature). A feature constant over the training rows keeps std 1
    (its values become their difference from that constant). Images are refused:
    their decoders take pixels in 0..1."""
    unknown = [m for m in names if m not in arrays]
    if unknown:
        raise DataError(f"--standardize {', '.join(unknown)}: no such modality "
                        f"(modalities: {', '.join(arrays)})")
    pictures = [m for m in names if m in images]
    if pictures:
        raise DataError(f"--standardize {', '.join(pictures)}: images keep pixels in "
                        f"0..1, which their decoders (a sigmoid) produce")
    out, stats = dict(arrays), {}
    for m in names:
        x = np.asarray(arrays[m], dtype=np.float64)
        flat = x.reshape(len(x), -1)
        train = flat[train_rows]
        if not np.isfinite(train).all():  # named by the preparer's own check later
            continue
        mean, std = train.mean(0), train.std(0)
        std = np.where(std > 0, std, 1.0)
        out[m] = ((flat - mean) / std).reshape(x.shape).astype(np.float32)
        stats[m] = {"mean": mean.tolist(), "std": std.tolist()}
    return out, stats


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
