"""Writing site files (the format: :mod:`mmvm.data.store`), chunk by chunk, atomically.

:func:`write_site_table_batches` takes an iterable of :class:`SiteChunk` (or plain
``(sample_ids, tensors, labels, columns)`` tuples) and writes them through one
``pyarrow.parquet.ParquetWriter`` inside :func:`mmvm.atomic.atomic_write`, so the
file appears only when complete; on any error, one raised by the iterator included,
there is no file and no temporary file (an existing file is left as it was).

- The first chunk fixes the schema: tensor shapes, dtypes and scales, label and
  other column names and types. Every later chunk is checked against it.
- Every chunk gets every check (ids unique and non-empty across *all* chunks,
  finite floats, integer labels, row counts); errors name the file, the column and
  the row's index in the whole file.
- Rows are regrouped into row groups of ``row_group_size`` whatever the chunk sizes,
  so the file is the one a single call with all rows writes. Memory: one chunk plus
  fewer than ``row_group_size`` buffered rows.

:func:`write_site_table` is the one-chunk case.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmvm.atomic import atomic_write
from mmvm.data.store_format import (
    DATASET_KEY,
    DEFAULT_SCALE,
    DTYPES,
    MAX_DIMS,
    MAX_TENSOR_VALUES,
    SAMPLE_ID,
    TENSOR_KEY,
    DataError,
    check_carried,
    check_column_name,
    check_finite,
    check_ids,
    check_labels,
    check_scale,
    is_label_column,
)


class SiteChunk(NamedTuple):
    """Consecutive rows of a site file, as :func:`write_site_table` takes them.

    ``tensors``: modality -> ``[n, *shape]`` uint8/float32; ``labels``: label column
    -> integer ``[n]``; ``columns``: other carried columns -> ``[n]``.
    """

    sample_ids: Sequence[str]
    tensors: Mapping[str, np.ndarray]
    labels: Mapping[str, np.ndarray] | None = None
    columns: Mapping[str, np.ndarray] | None = None


def write_site_table(
    path: str | os.PathLike,
    sample_ids: Sequence[str],
    tensors: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray] | None,
    dataset_meta: Mapping,
    *,
    columns: Mapping[str, np.ndarray] | None = None,
    scales: Mapping[str, float] | None = None,
    row_group_size: int = 1024,
    compression: str = "zstd",
) -> Path:
    """Write one site file atomically.

    Parameters
    ----------
    path : target ``.parquet`` file; its directory is created if needed.
    sample_ids : N unique, non-empty strings.
    tensors : modality name -> ``[N, *shape]`` uint8 or float32 array.
    labels : label column name (``label`` or ``label.<name>``) -> integer ``[N]``.
    dataset_meta : JSON-serialisable dict stored as ``mmvm.dataset``.
    columns : other carried columns -> ``[N]`` arrays.
    scales : per-modality scale; default 255 for uint8, 1 for float32.
    row_group_size : rows per Parquet row group (the unit of streaming).

    Returns
    -------
    The written path. Raises :class:`DataError` on invalid input, leaving no file.
    """
    chunk = SiteChunk(sample_ids, tensors, labels, columns)
    return write_site_table_batches(path, [chunk], dataset_meta, scales=scales,
                                    row_group_size=row_group_size,
                                    compression=compression)


def write_site_table_batches(
    path: str | os.PathLike,
    batches: Iterable[SiteChunk | tuple],
    dataset_meta: Mapping,
    *,
    scales: Mapping[str, float] | None = None,
    row_group_size: int = 1024,
    compression: str = "zstd",
) -> Path:
    """Write one site file atomically from consecutive chunks of rows.

    Parameters
    ----------
    path : target ``.parquet`` file; its directory is created if needed.
    batches : :class:`SiteChunk` (or ``(sample_ids, tensors, labels, columns)``)
        in row order, consumed once; the first one fixes the schema.
    dataset_meta : JSON-serialisable dict stored as ``mmvm.dataset``.
    scales : per-modality scale; default 255 for uint8, 1 for float32.
    row_group_size : rows per Parquet row group (the unit of streaming).

    Returns
    -------
    The written path. Raises :class:`DataError` on invalid input, on a chunk whose
    schema differs from the first one's, or when there is no chunk; an error leaves
    no file and no temporary file.
    """
    path = Path(path)
    rows = max(1, int(row_group_size))
    dataset = _dataset_json(dataset_meta, path)

    def write(fh) -> None:
        with ExitStack() as stack:
            writer, first, seen, start = None, None, {}, 0
            pending: list[pa.Table] = []  # fewer than `rows` rows awaiting a group
            for chunk in batches:
                table, specs = _chunk_table(SiteChunk(*chunk), str(path), start, seen,
                                            scales or {})
                if first is None:
                    first = (table.schema, specs)
                    meta = {(TENSOR_KEY + k).encode(): json.dumps(v).encode()
                            for k, v in specs.items()}
                    schema = table.schema.with_metadata({**meta, DATASET_KEY.encode():
                                                         dataset})
                    writer = stack.enter_context(
                        pq.ParquetWriter(fh, schema, compression=compression))
                else:
                    table = _like_first(table, specs, *first, str(path), start)
                start += table.num_rows
                pending.append(table)
                pending = _write_full_groups(writer, pending, rows)
            if writer is None:
                raise DataError(f"{path}: no chunk to write (the first chunk fixes "
                                f"the schema)")
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=rows)

    atomic_write(path, write)
    return path


def _dataset_json(dataset_meta: Mapping, path: Path) -> bytes:
    """``dataset_meta`` as the JSON object readers expect; anything else is refused."""
    if not isinstance(dataset_meta, Mapping):
        raise DataError(f"{path}: dataset metadata must be a mapping, got "
                        f"{type(dataset_meta).__name__}")
    try:
        return json.dumps(dict(dataset_meta), sort_keys=True).encode()
    except (TypeError, ValueError, RecursionError) as e:
        raise DataError(f"{path}: dataset metadata is not JSON-serialisable ({e})") \
            from None


def _write_full_groups(writer: pq.ParquetWriter, pending: list[pa.Table],
                       rows: int) -> list[pa.Table]:
    """Write the whole row groups in ``pending``; return the rest (< ``rows`` rows)."""
    n = sum(t.num_rows for t in pending)
    if n < rows:
        return pending
    table = pa.concat_tables(pending)
    full = n - n % rows
    writer.write_table(table.slice(0, full), row_group_size=rows)
    return [table.slice(full)] if full < n else []


def _chunk_table(chunk: SiteChunk, path: str, start: int, seen: dict[str, int],
                 scales: Mapping[str, float]) -> tuple[pa.Table, dict[str, dict]]:
    """Check one chunk (rows ``start..``) into an Arrow table and its tensor specs."""
    n = len(chunk.sample_ids)
    at = f", chunk at row {start}" if start else ""
    ids = [str(s) if s is not None else None for s in chunk.sample_ids]
    check_ids(ids, path, start, seen)
    arrays: dict[str, pa.Array] = {SAMPLE_ID: pa.array(ids, type=pa.string())}
    specs: dict[str, dict] = {}
    for name, arr in chunk.tensors.items():
        check_column_name(name, path)
        if is_label_column(name):
            raise DataError(f"{path}: tensor {name!r}: 'label' and 'label.<name>' are "
                            f"label columns; name the modality otherwise")
        arr = np.asarray(arr)
        if arr.ndim < 1 or arr.shape[0] != n:
            raise DataError(f"{path}: column '{name}'{at}: "
                            f"{arr.shape[0] if arr.ndim else 0} rows for {n} sample ids")
        dtype = arr.dtype.name
        if dtype not in DTYPES:
            raise DataError(f"{path}: column '{name}'{at}: dtype {dtype} not allowed "
                            f"(allowed: {sorted(DTYPES)})")
        shape = [int(s) for s in arr.shape[1:]]
        size = math.prod(shape)
        if not 1 <= len(shape) <= MAX_DIMS or size == 0 or size > MAX_TENSOR_VALUES:
            raise DataError(f"{path}: column '{name}'{at}: a sample's tensor has shape "
                            f"{shape}; it needs 1 to {MAX_DIMS} dimensions, all > 0, and "
                            f"at most {MAX_TENSOR_VALUES} values ([N, *shape] arrays)")
        scale = check_scale(scales.get(name, DEFAULT_SCALE[dtype]),
                            f"{path}: column '{name}'")
        check_finite(arr, name, path, ids, start, scale)
        flat = pa.array(np.ascontiguousarray(arr).reshape(-1), type=DTYPES[dtype])
        arrays[name] = pa.FixedSizeListArray.from_arrays(flat, size)
        specs[name] = {"shape": shape, "dtype": dtype, "scale": scale}
    unknown = sorted(set(scales) - set(specs))
    if unknown:
        raise DataError(f"{path}: scales given for unknown tensors {unknown}")
    for name, arr in (chunk.labels or {}).items():
        if not is_label_column(name):
            raise DataError(f"{path}: column '{name}': label columns are named "
                            f"'label' or 'label.<name>'")
        arr = np.asarray(arr)
        if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"{path}: column '{name}'{at}: labels must be integer "
                            f"[{n}], got {arr.dtype} {arr.shape}")
        arrays[name] = pa.array(check_labels(arr, name, path, ids, start), type=pa.int64())
    for name, arr in (chunk.columns or {}).items():
        check_column_name(name, path)
        if is_label_column(name):
            raise DataError(f"{path}: column '{name}': pass labels via `labels`")
        if name in arrays:
            raise DataError(f"{path}: column '{name}' is also a tensor; columns and "
                            f"modalities need distinct names")
        arr = np.asarray(arr)
        if len(arr) != n:
            raise DataError(f"{path}: column '{name}'{at}: {len(arr)} rows for {n} ids")
        try:
            arrays[name] = pa.array(arr)
        except (pa.ArrowException, TypeError, ValueError) as e:
            raise DataError(f"{path}: column '{name}'{at}: not an Arrow column ({e})") \
                from None
        check_carried(arrays[name], name, path, ids, start)
    return pa.table(arrays), specs


def _like_first(table: pa.Table, specs: dict[str, dict], schema: pa.Schema,
                first_specs: dict[str, dict], path: str, start: int) -> pa.Table:
    """``table`` with the first chunk's column order; a different schema raises."""
    for name in dict.fromkeys([*schema.names, *table.schema.names]):
        if name not in table.schema.names:
            raise DataError(f"{path}: column '{name}', chunk at row {start}: missing "
                            f"(the first chunk fixed the columns {schema.names})")
        if name not in schema.names:
            raise DataError(f"{path}: column '{name}', chunk at row {start}: not in "
                            f"the first chunk, which fixed the columns {schema.names}")
    table = table.select(schema.names)
    for name in schema.names:
        have, want = specs.get(name), first_specs.get(name)
        if have != want:
            raise DataError(f"{path}: column '{name}', chunk at row {start}: tensor "
                            f"{_describe(have)}, but the first chunk fixed "
                            f"{_describe(want)}")
        got, fixed = table.schema.field(name).type, schema.field(name).type
        if got != fixed:
            raise DataError(f"{path}: column '{name}', chunk at row {start}: type "
                            f"{got}, but the first chunk fixed {fixed}")
    return table


def _describe(spec: dict | None) -> str:
    if spec is None:
        return "none (not a tensor)"
    return f"{spec['shape']} {spec['dtype']} scale {spec['scale']:g}"
