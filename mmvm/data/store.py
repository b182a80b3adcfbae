"""The site Parquet format: one file per (site, split), see docs/design.md.

Columns
-------
- ``sample_id``: string, unique, never null.
- one ``fixed_size_list<uint8 | float32>`` column per modality (``m0``, ``frontal``),
  the flattened tensor; schema metadata ``mmvm.tensor.<column>`` holds the JSON
  ``{"shape": [3, 28, 28], "dtype": "uint8", "scale": 255}`` (divide by ``scale`` to
  get the model's input).
- optional labels ``label`` / ``label.<name>`` (integers, read as int64, null -> -1).
- any other column is carried as-is (``SiteTable.columns``) and never used by the model.
- file metadata ``mmvm.dataset``: JSON describing source, versions, seed, recipe.

Every reader check raises :class:`DataError` naming the file, the column and, where
one exists, the row and sample id. Partial readers (``mmvm.data.streaming``) reuse
the checks: :func:`open_parquet`, :func:`read_layout`, :func:`select_modalities`,
:func:`check_ids`, :func:`convert_batch`. The writers live in
:mod:`mmvm.data.store_write` (re-exported here): :func:`write_site_table` for arrays
in memory, :func:`write_site_table_batches` for chunks of rows streamed into one
file; both are atomic (``mmvm.atomic``) and apply the same checks.

Example
-------
>>> write_site_table("s0/train.parquet", ids, {"m0": x_uint8}, {"label": y}, meta)
>>> write_site_table_batches("s0/big.parquet", (SiteChunk(i, {"m0": x}) for i, x
...                           in chunks), meta, row_group_size=256)
>>> t = read_site_table("s0/train.parquet", modalities=["m0"])
>>> t.tensors["m0"].shape, t.scales["m0"]
((N, 3, 28, 28), 255.0)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmvm.data.store_format import (
    DATASET_KEY,
    DEFAULT_SCALE,
    DTYPES,
    LABEL,
    SAMPLE_ID,
    TENSOR_KEY,
    DataError,
    check_finite,
    check_ids,
    is_label_column,
)
from mmvm.data.store_write import SiteChunk, write_site_table, write_site_table_batches

__all__ = [
    "DATASET_KEY", "DEFAULT_SCALE", "DTYPES", "LABEL", "SAMPLE_ID", "TENSOR_KEY",
    "DataError", "Layout", "SiteChunk", "SiteTable", "check_finite", "check_ids",
    "convert_batch", "is_label_column", "iter_site_batches", "open_parquet",
    "read_layout", "read_site_meta", "read_site_table", "select_modalities",
    "write_site_table", "write_site_table_batches",
]


@dataclass
class SiteTable:
    """One site file (or one streamed batch of it) in memory.

    ``tensors[name]`` is ``[N, *shape]`` in the stored dtype (uint8 or float32);
    ``labels`` maps label column names to int64 ``[N]`` (-1 = unknown); ``columns``
    holds any other carried column; ``start`` is the row offset of a streamed batch.
    """

    sample_ids: list[str]
    tensors: dict[str, np.ndarray]
    scales: dict[str, float]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    dataset_meta: dict = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    path: str = ""
    start: int = 0

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def modalities(self) -> list[str]:
        return list(self.tensors)


# ------------------------------------------------------------------------------ read


@dataclass(frozen=True)
class Layout:
    """What a site file's schema says: tensor specs, label columns, other columns."""

    path: str
    specs: dict[str, dict]  # name -> {"shape": tuple, "dtype": str, "scale": float}
    labels: list[str]
    others: list[str]
    dataset_meta: dict
    num_rows: int


def open_parquet(path: str | os.PathLike) -> pq.ParquetFile:
    """Open a Parquet file; a missing or non-Parquet file raises :class:`DataError`."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a Parquet file ({e})") from None


def read_layout(pf: pq.ParquetFile, path: str) -> Layout:
    """Validate the schema of ``pf`` (opened from ``path``, named in errors): a Layout."""
    schema = pf.schema_arrow
    raw = schema.metadata or {}
    meta = {k.decode(): v.decode() for k, v in raw.items()}
    if SAMPLE_ID not in schema.names:
        raise DataError(f"{path}: missing column '{SAMPLE_ID}' "
                        f"(columns: {schema.names})")
    if not (pa.types.is_string(schema.field(SAMPLE_ID).type)
            or pa.types.is_large_string(schema.field(SAMPLE_ID).type)):
        raise DataError(f"{path}: column '{SAMPLE_ID}' must be string, "
                        f"got {schema.field(SAMPLE_ID).type}")
    specs, labels, others = {}, [], []
    for f in schema:
        if f.name == SAMPLE_ID:
            continue
        key = TENSOR_KEY + f.name
        if key in meta:
            specs[f.name] = _spec(f, meta[key], path)
        elif pa.types.is_fixed_size_list(f.type):
            raise DataError(f"{path}: column '{f.name}': tensor column without "
                            f"schema metadata '{key}'")
        elif is_label_column(f.name):
            if not pa.types.is_integer(f.type):
                raise DataError(f"{path}: column '{f.name}': labels must be integer, "
                                f"got {f.type}")
            labels.append(f.name)
        else:
            others.append(f.name)
    for key in meta:
        if key.startswith(TENSOR_KEY) and key[len(TENSOR_KEY):] not in schema.names:
            raise DataError(f"{path}: metadata '{key}' names a column that does not "
                            f"exist (columns: {schema.names})")
    try:
        dataset_meta = json.loads(meta.get(DATASET_KEY, "{}"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: metadata '{DATASET_KEY}' is not JSON ({e})") from None
    return Layout(path, specs, labels, others, dataset_meta, pf.metadata.num_rows)


def _spec(f: pa.Field, text: str, path: str) -> dict:
    col = f"{path}: column '{f.name}'"
    try:
        info = json.loads(text)
        shape = tuple(int(s) for s in info["shape"])
        dtype = str(info["dtype"])
        scale = float(info.get("scale", DEFAULT_SCALE.get(dtype, 1.0)))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{col}: bad tensor metadata {text!r} ({e!r})") from None
    if dtype not in DTYPES:
        raise DataError(f"{col}: metadata dtype '{dtype}' not allowed "
                        f"(allowed: {sorted(DTYPES)})")
    if not pa.types.is_fixed_size_list(f.type):
        raise DataError(f"{col}: expected fixed_size_list<{dtype}>, got {f.type}")
    if f.type.value_type != DTYPES[dtype]:
        raise DataError(f"{col}: stored dtype {f.type.value_type} does not match "
                        f"metadata dtype {dtype}")
    size = int(np.prod(shape, dtype=np.int64))
    if f.type.list_size != size or any(s <= 0 for s in shape):
        raise DataError(f"{col}: list size {f.type.list_size} does not match metadata "
                        f"shape {list(shape)} ({size} values)")
    if not scale > 0:
        raise DataError(f"{col}: metadata scale must be > 0, got {scale}")
    return {"shape": shape, "dtype": dtype, "scale": scale}


def select_modalities(layout: Layout, modalities: Sequence[str] | None) -> list[str]:
    """The tensor columns to read: all (``None``) or ``modalities``, which must exist."""
    if modalities is None:
        return list(layout.specs)
    unknown = [m for m in modalities if m not in layout.specs]
    if unknown:
        raise DataError(f"{layout.path}: unknown modality {unknown}; "
                        f"available: {list(layout.specs)}")
    return list(modalities)


def convert_batch(batch: pa.RecordBatch | pa.Table, layout: Layout, names: list[str],
                  start: int, seen: dict[str, int]) -> SiteTable:
    """Validate rows ``start..`` of a file (batch or table) into a :class:`SiteTable`.

    Ids via :func:`check_ids`; tensors ``names`` non-null and finite; all of ``layout``'s
    label and other columns."""
    path = layout.path
    ids = batch.column(SAMPLE_ID).to_pylist()
    check_ids(ids, path, start, seen)
    tensors, scales = {}, {}
    for name in names:
        spec = layout.specs[name]
        col = batch.column(name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if col.null_count:
            i = int(np.argmax(np.asarray(col.is_null())))
            raise DataError(f"{path}: column '{name}', row {start + i} "
                            f"(id '{ids[i]}'): null tensor")
        flat = col.flatten()
        if flat.null_count:
            i = int(np.argmax(np.asarray(flat.is_null()))) // col.type.list_size
            raise DataError(f"{path}: column '{name}', row {start + i} "
                            f"(id '{ids[i]}'): null value inside the tensor")
        arr = flat.to_numpy(zero_copy_only=False).reshape(len(ids), *spec["shape"])
        arr = np.require(arr, dtype=spec["dtype"], requirements=["C", "W"])
        check_finite(arr, name, path, ids, start)
        tensors[name], scales[name] = arr, spec["scale"]
    labels = {}
    for name in layout.labels:
        col = batch.column(name)
        col = col.fill_null(-1) if col.null_count else col
        labels[name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)
    columns = {c: batch.column(c).to_numpy(zero_copy_only=False) for c in layout.others}
    return SiteTable(ids, tensors, scales, labels, dict(layout.dataset_meta), columns,
                     path, start)


def read_site_table(path: str | os.PathLike,
                    modalities: Sequence[str] | None = None) -> SiteTable:
    """Read and validate a whole site file.

    Parameters
    ----------
    path : the ``.parquet`` file.
    modalities : tensor columns to load (default: all); unknown names raise
        :class:`DataError` listing the available ones.
    """
    path = str(path)
    pf = open_parquet(path)
    layout = read_layout(pf, path)
    names = select_modalities(layout, modalities)
    cols = [SAMPLE_ID, *names, *layout.labels, *layout.others]
    try:
        table = pf.read(columns=cols)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: unreadable Parquet data ({e})") from None
    return convert_batch(table, layout, names, 0, {})


def read_site_meta(path: str | os.PathLike) -> dict:
    """Schema-level facts without reading the data: rows, tensor specs, labels, meta."""
    path = str(path)
    pf = open_parquet(path)
    lay = read_layout(pf, path)
    return {"num_rows": lay.num_rows, "num_row_groups": pf.metadata.num_row_groups,
            "tensors": lay.specs, "labels": lay.labels, "columns": lay.others,
            "dataset": lay.dataset_meta, "schema": pf.schema_arrow}


def iter_site_batches(path: str | os.PathLike, modalities: Sequence[str] | None,
                      batch_size: int = 1024) -> Iterator[SiteTable]:
    """Stream a site file in batches of at most ``batch_size`` rows.

    Reads row group by row group (``ParquetFile.iter_batches``), so a site's data
    need not fit in memory. Each yielded :class:`SiteTable` carries ``start``, its
    first row's index in the file; every batch gets the checks of
    :func:`read_site_table`, and sample ids are checked unique across batches.
    """
    path = str(path)
    pf = open_parquet(path)
    layout = read_layout(pf, path)
    names = select_modalities(layout, modalities)
    cols = [SAMPLE_ID, *names, *layout.labels, *layout.others]
    seen: dict[str, int] = {}
    start = 0
    try:
        for batch in pf.iter_batches(batch_size=max(1, int(batch_size)), columns=cols):
            yield convert_batch(batch, layout, names, start, seen)
            start += batch.num_rows
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: unreadable Parquet data near row {start} ({e})") \
            from None
