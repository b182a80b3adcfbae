"""The real data a coherence judge (:mod:`mmvm.classifiers`) trains and scores on.

A modality's judge reads the rows of every site file holding it, and their labels
joined by sample id across all the site files (as the probes read them: a sample's
label is known if any file has it), so a modality whose own file has no label column
still gets a judge from the labels other sites keep. :func:`labelled_count` says how
many rows that is without decoding a tensor, so a modality with none is known before
any judge trains.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

Paths = str | os.PathLike | Sequence[str | os.PathLike]


def site_files(paths: Paths) -> list[Path]:
    """``paths`` (one file or several) as a list of paths."""
    return [Path(paths)] if isinstance(paths, (str, os.PathLike)) else list(map(Path, paths))


def holding(paths: Paths, name: str) -> list[Path]:
    """The files of ``paths`` that hold modality ``name`` (at least one)."""
    from mmvm.data.store import read_site_meta

    files = site_files(paths)
    held = [p for p in files if name in read_site_meta(p)["tensors"]]
    if not held:
        raise ValueError(f"no modality {name!r} in {[str(p) for p in files]}")
    return held


def is_image(paths: Paths, name: str) -> bool:
    """Whether modality ``name`` is stored as images (uint8 ``[C, H, W]``)."""
    from mmvm.data.store import read_site_meta

    tensor = read_site_meta(holding(paths, name)[0])["tensors"][name]
    return tensor["dtype"] == "uint8" and len(tensor["shape"]) == 3


def labelled_count(paths: Paths, name: str, label: str = "label") -> int:
    """How many of modality ``name``'s rows in ``paths`` have a known ``label``,
    joined by sample id across all the files (no tensor is decoded)."""
    from mmvm.data.labels import read_labels
    from mmvm.data.store import read_site_table

    ids = [s for p in holding(paths, name) for s in read_site_table(p, []).sample_ids]
    return int((read_labels(site_files(paths), ids, [label])[label] >= 0).sum())


def labelled_rows(paths: Paths, name: str, label: str = "label"
                  ) -> tuple[Tensor, Tensor, float]:
    """A modality's stored rows that have a known label (joined by sample id across
    ``paths``, one file or several), those labels, and the modality's scale; no rows
    when no file has a ``label`` column."""
    import torch

    from mmvm.data.dataset import MultimodalDataset

    ds = MultimodalDataset.from_parquet(site_files(paths), [name], label=label)
    labels = ds.labels if ds.labels is not None else torch.full((len(ds),), -1)
    keep = ds.mask[:, 0] & (labels >= 0)
    return ds.tensors[name][keep], labels[keep], ds.scales[name]


def no_judge(paths: Paths, name: str, label: str) -> str:
    """Why modality ``name`` gets no judge: none of its rows has a known label."""
    files = ", ".join(str(p) for p in site_files(paths))
    return (f"no {name} sample has a known {label!r} in {files} (labels joined by "
            f"sample id): no {name} judge, so coherence to {name} is not scored")
