"""Model-ready datasets: site tables joined by ``sample_id`` into batches.

A :class:`MultimodalDataset` holds, for an ordered list of sample ids, one tensor per
modality (zeros where a sample lacks it) and the boolean ``mask`` of which modalities
each sample has. It is built from one Parquet file holding every modality (the
centralized case) or from several site files joined on ``sample_id`` (the union of
ids, sorted, so every party derives the same order). ``dataset.batch(rows)`` returns
the batch dict of docs/design.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmvm.data.label_names import check_label_names
from mmvm.data.store import (
    IN_MEMORY_HINT,
    DataError,
    SiteTable,
    read_site_meta,
    read_site_table,
)
from mmvm.data.store_limits import ROW_INDEX_BYTES, check_fits, row_bytes
from mmvm.subsample import keep_ids


class IdIndex:
    """Sample-id lookups shared by the in-memory and the streaming dataset
    (both keep ``_pos``: sample id -> row)."""

    _pos: dict[str, int]

    def contains(self, sample_id: str) -> bool:
        """Whether ``sample_id`` is one of this dataset's samples."""
        return sample_id in self._pos

    def position(self, sample_id: str) -> int:
        """Row of ``sample_id``; an unknown id raises :class:`DataError`."""
        try:
            return self._pos[sample_id]
        except KeyError:
            raise DataError(f"unknown sample id {sample_id!r} "
                            f"(this dataset holds {len(self)} ids)") from None

    def rows_of(self, sample_ids: Sequence[str]) -> np.ndarray:
        """Row positions of ``sample_ids``; an unknown id raises :class:`DataError`."""
        try:
            return np.fromiter((self._pos[s] for s in sample_ids), dtype=np.int64,
                               count=len(sample_ids))
        except KeyError as err:
            raise DataError(f"unknown sample id {err.args[0]!r} "
                            f"(this dataset holds {len(self)} ids)") from None


def merge_labels(labels: np.ndarray, rows: np.ndarray, lab: np.ndarray, ids: list[str],
                 path: str, label: str) -> None:
    """Write one site file's known labels into ``labels`` at ``rows``; a sample whose
    files disagree on its label is an error, said by class name where the file
    names its classes (the files then number them alike: a label that differs)."""
    known = lab >= 0
    clash = known & (labels[rows] >= 0) & (labels[rows] != lab)
    if clash.any():
        first = int(np.flatnonzero(clash)[0])
        here, there = int(lab[first]), int(labels[rows[first]])
        where = (f"{path}: sample id {ids[rows[first]]!r} has '{label}'")
        count = f"({int(clash.sum())} samples disagree)"
        from mmvm.data.label_names import class_names

        names = class_names([path], label)
        if names and max(here, there) < len(names):
            raise DataError(
                f"{where} {names[here]!r} here and {names[there]!r} in another site file "
                f"{count}: the sites label these samples differently; correct the "
                f"label at one site, or leave it unknown there")
        raise DataError(
            f"{where} {here} here and {there} in another site file {count}: the sites "
            f"label these samples differently, or number the classes differently "
            f"(class names are numbered in sorted order: prepare every site with the "
            f"same --classes)")
    labels[rows[known]] = lab[known]


class MultimodalDataset(IdIndex, torch.utils.data.Dataset):
    """Aligned multimodal samples; tensors kept in their stored dtype (uint8 saves 4x).

    Parameters
    ----------
    sample_ids : N ids, the order of ``index``.
    tensors : modality -> ``[N, *shape]`` array (stored dtype).
    scales : modality -> divisor giving the model's float input.
    mask : ``bool [N, M]`` in the order of ``names``.
    labels : ``int64 [N]`` (-1 unknown) or None.
    """

    def __init__(self, sample_ids: Sequence[str], tensors: dict[str, np.ndarray],
                 scales: dict[str, float], mask: np.ndarray,
                 labels: np.ndarray | None = None) -> None:
        self.sample_ids = list(sample_ids)
        self.names = list(tensors)
        n = len(self.sample_ids)
        for name, arr in tensors.items():
            if len(arr) != n:
                raise DataError(f"modality {name!r}: {len(arr)} rows for {n} sample ids")
        if mask.shape != (n, len(self.names)):
            raise DataError(f"mask has shape {mask.shape}, expected {(n, len(self.names))}")
        self.tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
        self.scales = {k: float(scales[k]) for k in self.names}
        self.mask = torch.from_numpy(np.asarray(mask, dtype=bool))
        self.labels = None if labels is None else torch.from_numpy(
            np.asarray(labels, dtype=np.int64))
        self._pos = {sid: i for i, sid in enumerate(self.sample_ids)}

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape[1:]) for k, v in self.tensors.items()}

    def batch(self, rows: Sequence[int] | torch.Tensor) -> dict:
        """The batch dict for ``rows``: float inputs, mask, index and labels."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        x = {k: v[idx].float().div_(self.scales[k]) for k, v in self.tensors.items()}
        out = {"x": x, "mask": self.mask[idx], "index": idx}
        if self.labels is not None:
            out["label"] = self.labels[idx]
        return out

    def __getitem__(self, i: int) -> dict:
        b = self.batch([i])
        return {"x": {k: v[0] for k, v in b["x"].items()}, "mask": b["mask"][0],
                "index": b["index"][0], **({"label": b["label"][0]} if "label" in b else {})}

    def subset(self, rows: Sequence[int]) -> "MultimodalDataset":
        """A new dataset with only ``rows`` (in that order)."""
        idx = np.asarray(rows, dtype=np.int64)
        return MultimodalDataset(
            [self.sample_ids[i] for i in idx],
            {k: v.numpy()[idx] for k, v in self.tensors.items()}, self.scales,
            self.mask.numpy()[idx], None if self.labels is None else self.labels.numpy()[idx])

    def select(self, names: Sequence[str]) -> "MultimodalDataset":
        """Only the modalities ``names`` (same samples, same order)."""
        missing = [n for n in names if n not in self.names]
        if missing:
            raise DataError(f"unknown modalities {missing}; this dataset has {self.names}")
        cols = [self.names.index(n) for n in names]
        return MultimodalDataset(
            self.sample_ids, {n: self.tensors[n].numpy() for n in names},
            self.scales, self.mask.numpy()[:, cols],
            None if self.labels is None else self.labels.numpy())

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_tables(cls, tables: Sequence[SiteTable], names: Sequence[str] | None = None,
                    label: str = "label", limit: int = 0) -> "MultimodalDataset":
        """Join site tables on ``sample_id`` (outer join, ids sorted).

        A modality may appear in several tables (horizontal split: different samples);
        a sample that appears for the same modality twice is an error. ``limit`` keeps
        ``limit`` ids of the union chosen at random, reproducibly (0 = all;
        :func:`mmvm.subsample.keep_ids`).
        """
        if not tables:
            raise DataError("no site tables given")
        ids = sorted(set().union(*(t.sample_ids for t in tables)))
        ids = keep_ids(ids, limit)
        pos = {sid: i for i, sid in enumerate(ids)}
        names = list(names) if names else list(dict.fromkeys(
            m for t in tables for m in t.modalities))
        n = len(ids)
        tensors: dict[str, np.ndarray] = {}
        scales: dict[str, float] = {}
        mask = np.zeros((n, len(names)), dtype=bool)
        labels = np.full(n, -1, dtype=np.int64)
        has_label = False
        for t in tables:
            rows = np.array([pos.get(s, -1) for s in t.sample_ids], dtype=np.int64)
            keep = rows >= 0
            rows = rows[keep]
            for j, name in enumerate(names):
                if name not in t.tensors:
                    continue
                arr = t.tensors[name][keep]
                if name not in tensors:
                    tensors[name] = np.zeros((n, *arr.shape[1:]), dtype=arr.dtype)
                    scales[name] = t.scales[name]
                elif tensors[name].shape[1:] != arr.shape[1:]:
                    raise DataError(f"{t.path}: modality {name!r} has shape {arr.shape[1:]}"
                                    f", other sites have {tensors[name].shape[1:]}")
                dup = mask[rows, j]
                if dup.any():
                    raise DataError(f"{t.path}: sample id {ids[rows[dup][0]]!r} holds "
                                    f"modality {name!r} in more than one site file")
                tensors[name][rows] = arr
                mask[rows, j] = True
            if label in t.labels:
                merge_labels(labels, rows, t.labels[label][keep], ids, t.path, label)
                has_label = True
        absent = [m for m in names if m not in tensors]
        if absent:
            raise DataError(f"modalities {absent} are in no site file "
                            f"({[t.path for t in tables]})")
        return cls(ids, {m: tensors[m] for m in names}, scales, mask,
                   labels if has_label else None)

    @classmethod
    def from_parquet(cls, paths: str | os.PathLike | Sequence[str | os.PathLike],
                     names: Sequence[str] | None = None, label: str = "label",
                     limit: int = 0) -> "MultimodalDataset":
        """Read and join one or several site files (see :meth:`from_tables`)."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        held, need, have = [], 0, set()
        for p in paths:
            if not Path(p).exists():
                raise DataError(f"{p}: no such site file")
            meta = read_site_meta(p)
            have.update(meta["tensors"])
            names_p = list(meta["tensors"]) if names is None else [
                m for m in names if m in meta["tensors"]]
            held.append(names_p)
            # each table, then the joined arrays: twice the declared tensor bytes
            need += 2 * meta["num_rows"] * (row_bytes(meta["tensors"], names_p)
                                            + ROW_INDEX_BYTES)
        absent = [m for m in names or () if m not in have]
        if absent:  # before any row is read
            raise DataError(f"modalities {absent} are in no site file "
                            f"({[str(p) for p in paths]}; they hold {sorted(have)})")
        check_label_names(paths)
        check_fits(", ".join(str(p) for p in paths), "holding the dataset in memory",
                   need, IN_MEMORY_HINT)
        tables = [read_site_table(p, h) for p, h in zip(paths, held, strict=True)]
        return cls.from_tables(tables, names, label, limit)
