"""The real data a coherence judge (:mod:`mmvm.classifiers`) trains and scores on.

A modality's judge reads the rows of every site file holding it, and their labels
joined by sample id across all the site files (as the probes read them: a sample's
label is known if any file has it), so a modality whose own file has no label column
still gets a judge from the labels other sites keep. :func:`labelled_count` says how
many rows that is without decoding a tensor, so a modality with none is known before
any judge trains. A streaming site's judges read their rows a batch at a time from its
decoded copy (:class:`StreamedRows`), never the whole file.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
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


def labelled_rows(paths: Paths, name: str, label: str = "label", decoded_dir: str = ""
                  ) -> tuple[Tensor | StreamedRows, Tensor, float]:
    """A modality's stored rows that have a known label (joined by sample id across
    ``paths``, one file or several), those labels, and the modality's scale; no rows
    when no file has a ``label`` column. With ``decoded_dir``: the rows as
    :class:`StreamedRows` of a decoded copy there, already scaled (scale 1)."""
    from mmvm.data.dataset import MultimodalDataset
    from mmvm.data.streaming import StreamingDataset

    ds = StreamingDataset(site_files(paths), [name], label, decoded_dir=decoded_dir) \
        if decoded_dir else MultimodalDataset.from_parquet(site_files(paths), [name],
                                                           label=label)
    labels = ds.labels if ds.labels is not None else torch.full((len(ds),), -1)
    keep = ds.mask[:, 0] & (labels >= 0)
    if decoded_dir:
        return StreamedRows(ds, name, torch.nonzero(keep).flatten()), labels[keep], 1.0
    return ds.tensors[name][keep], labels[keep], ds.scales[name]


class StreamedRows:
    """Rows ``rows`` of modality ``name`` of a streaming dataset, indexed like the
    tensor of them (``x[idx]``, ``x[i:j]``, ``len``, ``shape``) and read only when
    indexed: the model's float inputs (the stored values over their scale), which
    a judge's ``.float().div_(1.0)`` leaves as they are."""

    def __init__(self, ds, name: str, rows: Tensor) -> None:
        self.ds, self.name, self.rows = ds, name, rows
        self.shape = torch.Size((len(rows), *ds.shapes[name]))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> Tensor:
        return self.ds.batch(self.rows[idx])["x"][self.name]


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (~1 s a GB), remembered while its size, time and
    inode stay: a process that evaluates several times reads each file once."""
    st = os.stat(path)
    return _digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def no_judge(paths: Paths, name: str, label: str) -> str:
    """Why modality ``name`` gets no judge: none of its rows has a known label."""
    files = ", ".join(str(p) for p in site_files(paths))
    return (f"no {name} sample has a known {label!r} in {files} (labels joined by "
            f"sample id): no {name} judge, so coherence to {name} is not scored")


def keep_only(path: Path, name: str) -> None:
    """Remove the judges of modality ``name`` in ``path``'s folder other than ``path``
    (``<name>-<16 hex digits>.pt``): a site keeps one judge per modality, so runs
    whose recipes differ (each keyed apart, each up to its max-params) cannot fill
    its state folder's disk."""
    import re

    mine = re.compile(rf"{re.escape(name)}-[0-9a-f]{{16}}\.pt")
    for other in path.parent.iterdir():
        if other != path and mine.fullmatch(other.name):
            other.unlink(missing_ok=True)
