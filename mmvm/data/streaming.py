"""A dataset that streams its tensors from Parquet row groups instead of holding them.

:class:`StreamingDataset` is a drop-in for :class:`mmvm.data.dataset.MultimodalDataset`
where the trainer and a federated site use it (``names``, ``sample_ids``, ``mask``,
``labels``, ``shapes``, ``scales``, ``len``, ``rows_of``, ``position``, ``contains``,
``batch``), for a site whose data need not fit in memory. It keeps only the index in
memory (the sorted sample ids, the mask, the labels and, per modality, which file and
row hold each sample: a few dozen bytes per row) plus a bounded LRU cache of decoded row
groups (``cache_row_groups``). ``batch(rows)`` reads only the row groups holding
``rows`` (:func:`mmvm.data.store.read_rows`: the needed columns of that group, batch
by batch, into arrays allocated once), validates them like
:mod:`mmvm.data.store` does (errors name the file, the column and the row) and returns
exactly what ``MultimodalDataset.from_parquet(paths, ...).batch(rows)`` returns, built
by the same sorted outer join of sample ids.

Random rows (the default full-permutation schedule) touch many row groups per batch;
``mmvm.schedule.epoch_batches_grouped(dataset.row_groups(), ...)`` keeps batches local
to a few groups so each group is read about once per epoch.

Example
-------
>>> ds = StreamingDataset("s0/train.parquet", ["m0", "m1"], cache_row_groups=8)
>>> b = ds.batch([5, 17, 3])          # reads only the groups holding rows 5, 17, 3
>>> ds.cache_info()["cached"]          # [(file index, row group), ...], at most 8
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmvm.data.dataset import IdIndex, merge_labels
from mmvm.data.decoded import Source, decoded_arrays
from mmvm.data.label_names import check_label_names
from mmvm.data.store import (
    DataError,
    open_parquet,
    read_layout,
    read_rows,
    select_modalities,
)
from mmvm.data.store_limits import ROW_INDEX_BYTES, check_fits, row_bytes
from mmvm.subsample import keep_ids

STREAM_HINT = "; lower data.cache_row_groups or write smaller row groups"


class _File:
    """One site file: its handle, layout, held modalities and row-group offsets."""

    def __init__(self, path: str, names: Sequence[str] | None) -> None:
        self.path = path
        self.stat = os.stat(path) if os.path.exists(path) else None  # before it is read
        self.pf = open_parquet(path)
        self.layout = read_layout(self.pf, path)
        if names is None:
            self.held = select_modalities(self.layout, None)
        else:
            self.held = [m for m in names if m in self.layout.specs]
        meta = self.pf.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.global_rows = np.zeros(0, dtype=np.int64)  # file row -> dataset row (-1: cut)

    @property
    def num_row_groups(self) -> int:
        return len(self.offsets) - 1

    def group_bytes(self) -> int:
        """Bytes of the largest decoded row group (held tensors)."""
        rows = int(np.diff(self.offsets).max()) if self.num_row_groups else 0
        return rows * row_bytes(self.layout.specs, self.held)

    def read_index(self, label: str) -> tuple[list[str], np.ndarray | None]:
        """All sample ids (validated) and the ``label`` column, batch by batch."""
        labels = [label] if label in self.layout.labels else []
        t = read_rows(self.pf, self.layout, [], labels=labels, others=[])
        return t.sample_ids, t.labels[label] if labels else None

    def read_group(self, k: int, ids: list[str]) -> dict[str, np.ndarray]:
        """Row group ``k``'s held tensors (stored dtype), validated."""
        st = read_rows(self.pf, self.layout, self.held, [k], labels=[], others=[],
                       hint=STREAM_HINT)
        if st.sample_ids != ids:
            start = int(self.offsets[k])
            raise DataError(f"{self.path}: row group {k} (rows {start}.."
                            f"{start + len(st) - 1}) no longer holds the sample ids it held "
                            "when the dataset was opened; was the file rewritten?")
        return st.tensors


class StreamingDataset(IdIndex, torch.utils.data.Dataset):
    """Aligned multimodal samples read from Parquet row groups on demand.

    Parameters
    ----------
    paths : one site file, or several joined on ``sample_id`` (sorted outer join, the
        same as :meth:`MultimodalDataset.from_parquet`, errors included).
    names : modalities, in the model's order (default: every tensor column, in file
        order).
    label : label column (``label`` or ``label.<name>``); -1 where unknown.
    limit : keep ``limit`` ids of the union chosen at random, reproducibly (0 = all;
        :func:`mmvm.subsample.keep_ids`).
    cache_row_groups : decoded row groups kept in memory (LRU), at least 1. One batch
        reads each row group it needs once, whatever this size.
    decoded_dir : a folder for a decoded copy of the tensors that batches read row by
        row (:mod:`mmvm.data.decoded`: random rows at disk speed, the tensors' size on
        disk); "" = none, batches decode the row groups they touch.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike],
                 names: Sequence[str] | None = None, label: str = "label",
                 limit: int = 0, cache_row_groups: int = 8,
                 decoded_dir: str | os.PathLike = "") -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not paths:
            raise DataError("no site files given")
        if int(cache_row_groups) < 1:
            raise ValueError(f"cache_row_groups must be >= 1, got {cache_row_groups}")
        self.cache_row_groups = int(cache_row_groups)
        files = []
        for p in paths:
            if not Path(p).exists():
                raise DataError(f"{p}: no such site file")
            files.append(_File(str(p), names))
        self.files = files
        check_label_names(paths)
        rows = sum(int(f.offsets[-1]) for f in files)
        groups = sorted((f.group_bytes() for f in files), reverse=True)
        held = 1 if decoded_dir else self.cache_row_groups  # a decoded copy holds none
        check_fits(", ".join(str(p) for p in paths),
                   f"an index of {rows} rows and {held} cached row groups",
                   rows * ROW_INDEX_BYTES + sum(groups[:held]), STREAM_HINT)
        self._build_index(names, label, limit)
        self._mapped = [decoded_arrays(decoded_dir, Source(
            f.path, f.stat, int(f.offsets[-1]), f.layout.specs, f.offsets,
            self.group_reader(fi)), f.held) if decoded_dir else None
            for fi, f in enumerate(files)]
        self._cache: OrderedDict[tuple[int, int], dict[str, np.ndarray]] = OrderedDict()
        self.reads: Counter[tuple[int, int]] = Counter()  # (file, group) -> reads
        self.peak_cached = 0

    # ------------------------------------------------------------------ index
    def _build_index(self, names: Sequence[str] | None, label: str, limit: int) -> None:
        index = [f.read_index(label) for f in self.files]
        ids = sorted(set().union(*(i for i, _ in index)))
        ids = keep_ids(ids, limit)
        pos = {sid: i for i, sid in enumerate(ids)}
        names = list(names) if names else list(dict.fromkeys(
            m for f in self.files for m in f.held))
        n = len(ids)
        self._file_ids: list[list[str]] = []
        src_file = {m: np.full(n, -1, dtype=np.int32) for m in names}
        src_row = {m: np.full(n, -1, dtype=np.int64) for m in names}
        specs: dict[str, dict] = {}
        dtypes: dict[str, str] = {}
        mask = np.zeros((n, len(names)), dtype=bool)
        labels = np.full(n, -1, dtype=np.int64)
        home = np.full(n, -1, dtype=np.int64)  # first file holding the id
        has_label = False
        for fi, (f, (fids, lab)) in enumerate(zip(self.files, index, strict=True)):
            self._file_ids.append(fids)
            rows = np.array([pos.get(s, -1) for s in fids], dtype=np.int64)
            f.global_rows = rows
            keep = rows >= 0
            file_rows = np.flatnonzero(keep)
            rows = rows[keep]
            unset = home[rows] < 0
            home[rows[unset]] = fi
            for j, name in enumerate(names):
                if name not in f.held:
                    continue
                spec = f.layout.specs[name]
                if name not in specs:
                    specs[name], dtypes[name] = spec, spec["dtype"]
                elif tuple(specs[name]["shape"]) != tuple(spec["shape"]):
                    raise DataError(f"{f.path}: modality {name!r} has shape "
                                    f"{tuple(spec['shape'])}, other sites have "
                                    f"{tuple(specs[name]['shape'])}")
                dup = mask[rows, j]
                if dup.any():
                    raise DataError(f"{f.path}: sample id {ids[rows[dup][0]]!r} holds "
                                    f"modality {name!r} in more than one site file")
                src_file[name][rows] = fi
                src_row[name][rows] = file_rows
                mask[rows, j] = True
            if lab is not None:
                merge_labels(labels, rows, lab[keep], ids, f.path, label)
                has_label = True
        absent = [m for m in names if m not in specs]
        if absent:
            raise DataError(f"modalities {absent} are in no site file "
                            f"({[f.path for f in self.files]}; they hold "
                            f"{sorted({m for f in self.files for m in f.layout.specs})})")
        self.sample_ids = ids
        self.names = names
        self._pos = pos
        self._src_file, self._src_row = src_file, src_row
        self._dtypes = dtypes
        self._shapes = {m: tuple(int(s) for s in specs[m]["shape"]) for m in names}
        self.scales = {m: float(specs[m]["scale"]) for m in names}
        self.mask = torch.from_numpy(mask)
        self.labels = torch.from_numpy(labels) if has_label else None
        self._home = home

    # ------------------------------------------------------------------ interface
    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    def row_groups(self) -> list[np.ndarray]:
        """Dataset rows grouped by the Parquet row group that holds them (for
        :func:`mmvm.schedule.epoch_batches_grouped`): each row is placed with the row
        group of the first file (in ``paths`` order) that holds its id."""
        out = []
        for fi, f in enumerate(self.files):
            rows = f.global_rows
            for k in range(f.num_row_groups):
                r = rows[f.offsets[k]:f.offsets[k + 1]]
                r = r[r >= 0]
                r = np.sort(r[self._home[r] == fi])
                if len(r):
                    out.append(r)
        return out

    def batch(self, rows: Sequence[int] | torch.Tensor) -> dict:
        """The batch dict for ``rows`` (docs/design.md), read from the row groups
        holding them; equal to ``MultimodalDataset.from_parquet(...).batch(rows)``."""
        if isinstance(rows, np.ndarray):
            rows = np.ascontiguousarray(rows)
        idx = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        n = len(self)
        pos = idx.numpy().copy()
        if len(pos) and (pos.min() < -n or pos.max() >= n):
            raise IndexError(f"row index out of range for a dataset of {n} rows")
        pos[pos < 0] += n
        B = len(pos)
        bufs = {m: np.zeros((B, *self._shapes[m]), dtype=self._dtypes[m]) for m in self.names}
        # which (file, row group) each (modality, batch position) needs
        need: dict[tuple[int, int], list[tuple[str, np.ndarray, np.ndarray]]] = {}
        for m in self.names:
            fi_all = self._src_file[m][pos]
            for fi in np.unique(fi_all[fi_all >= 0]):
                at = np.flatnonzero(fi_all == fi)
                frow = self._src_row[m][pos[at]]
                f = self.files[fi]
                if self._mapped[fi] is not None:  # a decoded copy: read just these rows
                    bufs[m][at] = self._mapped[fi][m][frow]
                    continue
                grp = np.searchsorted(f.offsets, frow, side="right") - 1
                for k in np.unique(grp):
                    sel = grp == k
                    need.setdefault((int(fi), int(k)), []).append(
                        (m, at[sel], frow[sel] - f.offsets[k]))
        # cached groups first, then in order of first use by the batch: with a schedule
        # that walks the groups in order, the group a batch ends in (which the next
        # batch starts with) is the most recently used and stays cached
        first = {key: min(int(at[0]) for _, at, _ in parts if len(at))
                 for key, parts in need.items()}
        for key in sorted(need, key=lambda k: (k not in self._cache, first[k], k)):
            group = self._group(key)
            for m, at, local in need[key]:
                bufs[m][at] = group[m][local]
        x = {m: torch.from_numpy(bufs[m]).float().div_(self.scales[m]) for m in self.names}
        out = {"x": x, "mask": self.mask[idx], "index": idx}
        if self.labels is not None:
            out["label"] = self.labels[idx]
        return out

    def __getitem__(self, i: int) -> dict:
        b = self.batch([i])
        return {"x": {k: v[0] for k, v in b["x"].items()}, "mask": b["mask"][0],
                "index": b["index"][0], **({"label": b["label"][0]} if "label" in b else {})}

    # ------------------------------------------------------------------ cache
    def group_reader(self, fi: int):
        """``read(k)``: row group ``k`` of file ``fi``, checked against the index."""
        f = self.files[fi]
        return lambda k: f.read_group(k, self._file_ids[fi][f.offsets[k]:f.offsets[k + 1]])

    def _group(self, key: tuple[int, int]) -> dict[str, np.ndarray]:
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        fi, k = key
        group = self.group_reader(fi)(k)
        self.reads[key] += 1
        self._cache[key] = group
        while len(self._cache) > self.cache_row_groups:
            self._cache.popitem(last=False)
        self.peak_cached = max(self.peak_cached, len(self._cache))
        return group

    def cache_info(self) -> dict:
        """``cached``: the (file, row group) keys held, least recent first; ``peak``:
        the most ever held at once; ``reads``: reads per key; ``capacity``."""
        return {"cached": list(self._cache), "peak": self.peak_cached,
                "reads": dict(self.reads), "capacity": self.cache_row_groups}
