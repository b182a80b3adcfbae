"""The site Parquet format: one file per (site, split), see docs/design.md.

Columns
-------
- ``sample_id``: string, unique, never null: 1..256 printable characters in NFC, no
  leading or trailing space (docs/data-limits.md).
- one ``fixed_size_list<uint8 | float32>`` column per modality (``m0``, ``frontal``),
  the flattened tensor; schema metadata ``mmvm.tensor.<column>`` holds the JSON
  ``{"shape": [3, 28, 28], "dtype": "uint8", "scale": 255}`` (divide by ``scale`` to
  get the model's input; 1..8 dimensions, at most 2**28 values, scale finite within
  [1e-6, 1e9], every value / scale finite in float32).
- optional labels ``label`` / ``label.<name>`` (integers -1..2**31-1, read as int64,
  null -> -1).
- any other column is carried as-is (``SiteTable.columns``) and never used by the
  model: one flat value per row, strings and binaries of at most 64 KiB.
- file metadata ``mmvm.dataset``: a JSON object describing source, versions, seed,
  recipe.

A file with no rows is valid: every reader returns an empty table. Before decoding,
the readers check each row group's declared sizes against the schema and the memory
the machine has (:mod:`mmvm.data.store_limits`), then decode batch by batch.

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

import dataclasses
import json
import os
from collections import Counter
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
    LATENTS_KEY,
    SAMPLE_ID,
    TENSOR_KEY,
    DataError,
    check_carried,
    check_finite,
    check_ids,
    is_label_column,
    label_values,
    show,
    tensor_spec,
)
from mmvm.data.store_limits import (
    ROW_INDEX_BYTES,
    check_fits,
    check_row_groups,
    decode_bytes,
    read_batch_rows,
    row_bytes,
)
from mmvm.data.store_write import SiteChunk, write_site_table, write_site_table_batches

__all__ = [
    "DATASET_KEY", "DEFAULT_SCALE", "DTYPES", "LABEL", "SAMPLE_ID", "TENSOR_KEY",
    "DataError", "Layout", "SiteChunk", "SiteTable", "check_finite", "check_ids",
    "convert_batch", "is_label_column", "iter_site_batches", "open_parquet",
    "read_layout", "read_rows", "read_site_meta", "read_site_table",
    "select_modalities", "write_site_table", "write_site_table_batches",
]

IN_MEMORY_HINT = ("; stream it instead (data.streaming = true) or use a machine with "
                  "more memory")
# errors a Parquet read can raise on a corrupt or hostile file (ArrowMemoryError is
# an ArrowException and a MemoryError)
READ_ERRORS = (pa.ArrowException, OSError, MemoryError)


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
    if os.path.isdir(path):  # a site folder where its files were meant
        raise DataError(f"{path}: is a folder; give its site files, e.g. "
                        f"{os.path.join(path, '*.parquet')}")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        return pq.ParquetFile(path)
    except (*READ_ERRORS, ValueError) as e:
        raise DataError(f"{path}: not a Parquet file ({e})") from None


def read_layout(pf: pq.ParquetFile, path: str) -> Layout:
    """Validate the schema of ``pf`` (opened from ``path``, named in errors): a Layout.

    Also checks every row group's declared sizes against the schema
    (:func:`~mmvm.data.store_limits.check_row_groups`) before any data is decoded."""
    schema = pf.schema_arrow
    meta = _mmvm_metadata(schema.metadata or {}, path)
    if LATENTS_KEY in meta:
        raise DataError(f"{path}: an `mmvm encode` output (posterior means and "
                        f"variances per sample), not a site's data file")
    twice = sorted(n for n, c in Counter(schema.names).items() if c > 1)
    if twice:
        raise DataError(f"{path}: columns {', '.join(show(n) for n in twice)} appear "
                        f"more than once")
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
            specs[f.name] = tensor_spec(f, meta[key], path)
        elif pa.types.is_fixed_size_list(f.type):
            raise DataError(f"{path}: column '{f.name}': tensor column without "
                            f"schema metadata '{key}'")
        elif is_label_column(f.name):
            if not pa.types.is_integer(f.type):
                raise DataError(f"{path}: column '{f.name}': labels must be integer, "
                                f"got {f.type}")
            labels.append(f.name)
        elif pa.types.is_nested(f.type):
            raise DataError(f"{path}: column '{f.name}': a carried column must hold "
                            f"one value per row, got {f.type}")
        else:
            others.append(f.name)
    for key in meta:
        if key.startswith(TENSOR_KEY) and key[len(TENSOR_KEY):] not in schema.names:
            raise DataError(f"{path}: metadata {show(key)} names a column that does "
                            f"not exist (columns: {schema.names})")
    dataset_meta = _dataset_meta(meta.get(DATASET_KEY, "{}"), path)
    check_row_groups(pf, path, specs)
    return Layout(path, specs, labels, others, dataset_meta, pf.metadata.num_rows)


def _mmvm_metadata(raw: dict[bytes, bytes], path: str) -> dict[str, str]:
    """The schema metadata keys of this format (``mmvm.*``), decoded; a key or value
    that is not UTF-8 raises :class:`DataError` (other keys are not ours: ignored)."""
    out = {}
    for k, v in raw.items():
        if not k.startswith(b"mmvm."):
            continue
        try:
            out[k.decode()] = v.decode()
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: schema metadata {show(k.decode(errors='replace'))}"
                            f" is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return out


def _dataset_meta(text: str, path: str) -> dict:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: metadata '{DATASET_KEY}' is not JSON ({e!r})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: metadata '{DATASET_KEY}' must be a JSON object, got "
                        f"{type(value).__name__}")
    return value


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
    label (:func:`~mmvm.data.store_format.label_values`) and other columns."""
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
        if len(flat) != len(ids) * col.type.list_size:
            raise DataError(f"{path}: column '{name}', rows {start}..{start + len(ids) - 1}"
                            f": {len(flat)} values for {len(ids)} rows of "
                            f"{col.type.list_size}")
        arr = flat.to_numpy(zero_copy_only=False).reshape(len(ids), *spec["shape"])
        arr = np.require(arr, dtype=spec["dtype"], requirements=["C", "W"])
        check_finite(arr, name, path, ids, start, spec["scale"])
        tensors[name], scales[name] = arr, spec["scale"]
    labels = {name: label_values(batch.column(name), name, path, ids, start)
              for name in layout.labels}
    columns = {}
    for c in layout.others:
        check_carried(batch.column(c), c, path, ids, start)
        columns[c] = batch.column(c).to_numpy(zero_copy_only=False)
    return SiteTable(ids, tensors, scales, labels, dict(layout.dataset_meta), columns,
                     path, start)


def read_rows(pf: pq.ParquetFile, layout: Layout, names: Sequence[str],
              groups: Sequence[int] | None = None, *, labels: Sequence[str] | None = None,
              others: Sequence[str] | None = None, hint: str = "") -> SiteTable:
    """The rows of row groups ``groups`` (default all; consecutive) as one validated
    :class:`SiteTable` with the tensors ``names`` and the ``labels`` and ``others``
    columns (default: all of ``layout``'s).

    Decodes batch by batch into arrays allocated once, so memory is the result plus
    one batch's working set; a result that cannot fit, or rows the row groups do not
    declare, raise :class:`DataError` (``hint`` ends the first message)."""
    md, path, names = pf.metadata, layout.path, list(names)
    groups = list(range(md.num_row_groups)) if groups is None else list(groups)
    lay = dataclasses.replace(
        layout, labels=list(layout.labels if labels is None else labels),
        others=list(layout.others if others is None else others))
    start = sum(md.row_group(k).num_rows for k in range(groups[0])) if groups else 0
    n = sum(md.row_group(k).num_rows for k in groups)
    size = read_batch_rows(layout.specs, names)
    check_fits(path, f"reading {n} rows", decode_bytes(layout.specs, names, min(n, size))
               + n * (row_bytes(layout.specs, names) + ROW_INDEX_BYTES
                      + 8 * len(lay.labels)), hint)
    tensors = {m: np.empty((n, *layout.specs[m]["shape"]), layout.specs[m]["dtype"])
               for m in names}
    cols = [SAMPLE_ID, *names, *lay.labels, *lay.others]
    parts: list[SiteTable] = []
    seen: dict[str, int] = {}
    pos = 0
    try:
        for batch in pf.iter_batches(batch_size=size, row_groups=groups, columns=cols) \
                if groups else ():
            if pos + batch.num_rows > n:
                raise DataError(f"{path}: row groups {groups[0]}..{groups[-1]} hold more "
                                f"than the {n} rows they declare")
            st = convert_batch(batch, lay, names, start + pos, seen)
            for m in names:
                tensors[m][pos:pos + len(st)] = st.tensors.pop(m)
            parts.append(st)
            pos += len(st)
    except READ_ERRORS as e:
        raise DataError(f"{path}: unreadable Parquet data near row {start + pos} "
                        f"({e})") from None
    if pos != n:
        raise DataError(f"{path}: row groups {groups[0]}..{groups[-1]} hold {pos} rows, "
                        f"they declare {n}")
    if not parts:  # no rows: the empty arrays of the right types
        parts = [convert_batch(pf.schema_arrow.empty_table().select(cols), lay, [],
                               start, seen)]
    return SiteTable([s for p in parts for s in p.sample_ids], tensors,
                     {m: layout.specs[m]["scale"] for m in names},
                     {c: np.concatenate([p.labels[c] for p in parts]) for c in lay.labels},
                     dict(layout.dataset_meta),
                     {c: np.concatenate([p.columns[c] for p in parts]) for c in lay.others},
                     path, start)


def read_site_table(path: str | os.PathLike,
                    modalities: Sequence[str] | None = None) -> SiteTable:
    """Read and validate a whole site file, batch by batch (:func:`read_rows`).

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
    return read_rows(pf, layout, names, hint=IN_MEMORY_HINT)


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
    need not fit in memory; batches are smaller than ``batch_size`` where its rows
    are large (:func:`~mmvm.data.store_limits.read_batch_rows`). Each yielded
    :class:`SiteTable` carries ``start``, its first row's index in the file; every
    batch gets the checks of :func:`read_site_table`, and sample ids are checked
    unique across batches.
    """
    path = str(path)
    pf = open_parquet(path)
    layout = read_layout(pf, path)
    names = select_modalities(layout, modalities)
    size = read_batch_rows(layout.specs, names, most=max(1, int(batch_size)))
    check_fits(path, f"a batch of {size} rows", decode_bytes(layout.specs, names, size)
               + size * row_bytes(layout.specs, names))
    cols = [SAMPLE_ID, *names, *layout.labels, *layout.others]
    seen: dict[str, int] = {}
    start = 0
    try:
        for batch in pf.iter_batches(batch_size=size, columns=cols):
            if start + batch.num_rows > layout.num_rows:
                raise DataError(f"{path}: holds more than the {layout.num_rows} rows "
                                f"it declares")
            yield convert_batch(batch, layout, names, start, seen)
            start += batch.num_rows
    except READ_ERRORS as e:
        raise DataError(f"{path}: unreadable Parquet data near row {start} ({e})") \
            from None
    if start != layout.num_rows:
        raise DataError(f"{path}: holds {start} rows, it declares {layout.num_rows}")
