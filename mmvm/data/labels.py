"""Label columns of site files, read apart from the tensors (for per-label probes).

A dataset carries one label column (``data.label``); multi-label evaluation (the 14
CheXpert findings of MIMIC-CXR, CelebA's 40 attributes) reads the ``label.<name>``
columns it needs here, by sample id, without decoding any image.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
from collections.abc import Sequence

import numpy as np

from mmvm.data.dataset import merge_labels
from mmvm.data.store import (
    DataError,
    open_parquet,
    read_layout,
    read_rows,
    read_site_meta,
)

Paths = Sequence[str | os.PathLike]


def all_label_columns(paths: Paths) -> list[str]:
    """Every label column of ``paths`` (``label``, ``label.<name>``), in the files'
    order, each once."""
    return list(dict.fromkeys(c for p in paths for c in read_site_meta(p)["labels"]))


def is_labelled(cfg, **splits) -> bool:
    """Whether the splits' datasets (``train=..., test=...``) are labelled: by
    ``cfg.data.label``, or by the columns ``cfg.eval.labels`` names (CelebA,
    MIMIC-CXR). False when the files have no label column at all: probes and
    coherence are left out, reconstruction is not. ``ValueError`` naming the label
    columns there are when a split lacks ``cfg.data.label`` but has others (a typo,
    or a column named otherwise) or another split has it."""
    if cfg.eval.labels:
        return True
    lacking = [split for split, dataset in splits.items() if dataset.labels is None]
    if not lacking:
        return True
    split = lacking[0]
    have = all_label_columns(cfg.data.files(split))
    if not have and len(lacking) == len(splits):
        return False
    close = difflib.get_close_matches(cfg.data.label, have, 1, 0.0)
    raise ValueError(
        f"the {split} data has no label column {cfg.data.label!r} (data.label); probes "
        f"and coherence need one label per sample. Its label columns: "
        f"{', '.join(have) or 'none'}"
        + (f"; e.g. --set data.label={close[0]}" if close else ""))


NO_LABELS = ("the data has no label column (data.label) and eval.labels names none: "
             "no probes and no coherence; reconstruction and pictures only")


def label_columns(paths: Paths, patterns: Sequence[str]) -> list[str]:
    """The label columns of ``paths`` matching ``patterns`` (names or shell-style
    patterns such as ``"label.*"``), in the files' order, each once.

    A pattern that matches no column raises :class:`DataError` listing the columns.
    """
    available = all_label_columns(paths)
    out: list[str] = []
    for pattern in patterns:
        hits = fnmatch.filter(available, pattern)
        if not hits:
            close = [] if any(ch in pattern for ch in "*?[") else \
                difflib.get_close_matches(pattern, available, 1)
            raise DataError(f"label column {pattern!r} (eval.labels) matches none of "
                            f"the label columns of {[str(p) for p in paths]}: {available}"
                            + (f"; did you mean {close[0]!r}?" if close else
                               f"; probe those with --set 'eval.labels="
                               f"{json.dumps(available)}', or data.label alone with "
                               f"--set 'eval.labels=[]'"))
        out += [c for c in hits if c not in out]
    return out


def read_labels(paths: Paths, sample_ids: Sequence[str], columns: Sequence[str]
                ) -> dict[str, np.ndarray]:
    """``{column: int64 [len(sample_ids)]}`` from the site files, -1 where unknown.

    A sample's label may come from any of the files (joined by sample id like
    :class:`~mmvm.data.dataset.MultimodalDataset`); files that disagree on a known
    value raise :class:`DataError`.
    """
    pos = {sid: i for i, sid in enumerate(sample_ids)}
    out = {c: np.full(len(sample_ids), -1, dtype=np.int64) for c in columns}
    for p in paths:
        pf = open_parquet(p)
        layout = read_layout(pf, str(p))
        held = [c for c in columns if c in layout.labels]
        if not held:
            continue
        # the same checks as every reader: ids, label range; no tensor is decoded
        table = read_rows(pf, layout, [], labels=held, others=[])
        rows = np.array([pos.get(s, -1) for s in table.sample_ids], dtype=np.int64)
        keep = rows >= 0
        for c in held:
            merge_labels(out[c], rows[keep], table.labels[c][keep], list(sample_ids),
                         str(p), c)
    return out
