"""Each sample's group (the trial or patient it belongs to): the carried column the
file's ``group_column`` metadata names (``group``, which ``mmvm data prepare``
writes where it splits by group; the hippocampus recipe's ``trial``). Samples of one
group are not independent (a trial's overlapping windows share its gain), so a score
over them is as sure as its groups, not its rows."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pyarrow.parquet as pq

from mmvm.data.store_format import SAMPLE_ID


def read_groups(paths: Sequence[str | os.PathLike], sample_ids: Sequence[str]
                ) -> np.ndarray | None:
    """The group of each of ``sample_ids`` ('' where no file gives one), or None where
    no file of ``paths`` names a group column (prepared without groups)."""
    from mmvm.data.store import read_site_meta

    pos = {s: i for i, s in enumerate(sample_ids)}
    out, found = np.full(len(sample_ids), "", dtype=object), False
    for p in paths:
        column = read_site_meta(p)["dataset"].get("group_column")
        if not column or column not in pq.read_schema(p).names:
            continue
        found = True
        table = pq.read_table(p, columns=[SAMPLE_ID, column])
        for sid, g in zip(table.column(0).to_pylist(), table.column(1).to_pylist(),
                          strict=True):
            if sid in pos and g is not None and str(g) != "":
                out[pos[sid]] = str(g)
    return out if found else None


def group_count(groups: np.ndarray | None, rows: np.ndarray) -> int | None:
    """How many groups the ``rows`` (a boolean mask or indices) span; None without
    groups, or where a row has none."""
    if groups is None:
        return None
    picked = groups[rows]
    return None if (picked == "").any() else len(set(picked.tolist()))
