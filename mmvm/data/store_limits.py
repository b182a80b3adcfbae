"""How much a site-file reader may decode: the file's declared sizes against what its
schema allows, and the memory the machine has (docs/data-limits.md).

A Parquet file is a few bytes of footer describing column chunks that may decompress
to anything: a 1 KB zstd file can hold gigabytes of zeros. Before decoding anything,
the readers check every row group's column chunks against what ``rows x declared row
size`` can take (:func:`check_row_groups`), size their read batches so that decoding
needs a bounded working set (:func:`read_batch_rows`), and refuse a read whose result
cannot fit in memory at all (:func:`check_fits`) with a :class:`DataError` instead of
a ``MemoryError`` or the kernel's OOM killer. All sizes are Python integers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmvm.data.store_format import MAX_CELL_BYTES, MAX_ID_CHARS, SAMPLE_ID, DataError

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None

ID_BYTES = 4 * MAX_ID_CHARS  # UTF-8 bytes of the longest valid sample id
ROW_INDEX_BYTES = 200  # an id held in memory: str object, dict entry, index arrays
DECODE_BYTES_PER_VALUE = 16  # pyarrow's working set per tensor value (measured ~14)
READ_CHUNK_BYTES = 64 << 20  # decoding working set aimed at per read batch
SLACK = 1 << 20  # per column chunk: page headers, dictionary, statistics
_WIDTH = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8}


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def memory_budget() -> int:
    """Bytes a reader may still allocate: the least of physical memory, the cgroup's
    memory limit and (when set) the address-space limit minus what is mapped now."""
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    for name in ("/sys/fs/cgroup/memory.max",
                 "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(name) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    if resource is not None:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            limits.append(soft - _mapped())
    return max(0, min(limits))


def _mapped() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def check_fits(path: str, what: str, nbytes: int, hint: str = "") -> None:
    """Raise :class:`DataError` if ``what`` (``nbytes``) cannot fit in memory."""
    budget = memory_budget()
    if nbytes > budget:
        raise DataError(f"{path}: {what} needs {fmt_bytes(nbytes)} of memory, more than "
                        f"the {fmt_bytes(budget)} this process can have{hint}")


def tensor_values(specs: Mapping[str, dict], names: Sequence[str]) -> int:
    """Values per row of the tensors ``names``."""
    return sum(math.prod(specs[m]["shape"]) for m in names)


def row_bytes(specs: Mapping[str, dict], names: Sequence[str]) -> int:
    """Bytes per row of the decoded tensors ``names`` (stored dtypes)."""
    return sum(math.prod(specs[m]["shape"]) * np.dtype(specs[m]["dtype"]).itemsize
               for m in names)


def read_batch_rows(specs: Mapping[str, dict], names: Sequence[str],
                    most: int = 65536) -> int:
    """Rows per read batch so that decoding ``names`` takes about
    :data:`READ_CHUNK_BYTES` (at least one row, at most ``most``)."""
    per_row = DECODE_BYTES_PER_VALUE * tensor_values(specs, names) + ROW_INDEX_BYTES
    return max(1, min(int(most), READ_CHUNK_BYTES // per_row))


def decode_bytes(specs: Mapping[str, dict], names: Sequence[str], rows: int) -> int:
    """Working set of decoding ``rows`` rows of ``names``."""
    return rows * (DECODE_BYTES_PER_VALUE * tensor_values(specs, names) + ROW_INDEX_BYTES)


def leaf_count(t: pa.DataType) -> int:
    """Parquet leaf columns an Arrow type is stored as."""
    if pa.types.is_struct(t):
        return sum(leaf_count(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return leaf_count(t.key_type) + leaf_count(t.item_type)
    if pa.types.is_nested(t):  # list, large_list, fixed_size_list, ...
        return leaf_count(t.value_type)
    return 1


def check_row_groups(pf: pq.ParquetFile, path: str, specs: Mapping[str, dict]) -> None:
    """Check every row group's column chunks against the schema before decoding.

    A column chunk may declare at most ``rows x values per row`` values and an
    uncompressed size of about twice what those values take in their physical type
    (:func:`chunk_limit`); the row groups' rows must add up to the file's. Values per
    row: a tensor's list size, 1 for any other column; a string or binary value
    counts :data:`ID_BYTES` in ``sample_id``, :data:`MAX_CELL_BYTES` elsewhere.
    """
    md, schema = pf.metadata, pf.schema_arrow
    counts = [leaf_count(f.type) for f in schema]
    if sum(counts) != md.num_columns:
        raise DataError(f"{path}: the Arrow schema's {sum(counts)} leaf columns do not "
                        f"match the file's {md.num_columns} Parquet columns")
    owner = [f.name for f, c in zip(schema, counts, strict=True) for _ in range(c)]
    per_row = {m: math.prod(spec["shape"]) for m, spec in specs.items()}
    total = 0
    for k in range(md.num_row_groups):
        rg = md.row_group(k)
        rows = rg.num_rows
        where = f"row group {k} (rows {total}..{total + rows - 1})"
        if rows < 0:
            raise DataError(f"{path}: {where} declares {rows} rows")
        for i, name in enumerate(owner):
            c = rg.column(i)
            values = rows * per_row.get(name, 1)
            if c.num_values > values:
                raise DataError(f"{path}: column '{name}', {where}: declares "
                                f"{c.num_values} values, more than the {values} its "
                                f"{rows} rows hold")
            limit = chunk_limit(values, rows, _width(pf, i, c.physical_type, name))
            if c.total_uncompressed_size > limit:
                raise DataError(
                    f"{path}: column '{name}', {where}: declares "
                    f"{fmt_bytes(c.total_uncompressed_size)} uncompressed, more than the "
                    f"{fmt_bytes(limit)} that {rows} rows of this column can take")
        total += rows
    if total != md.num_rows:
        raise DataError(f"{path}: the row groups hold {total} rows, the file declares "
                        f"{md.num_rows}")


def chunk_limit(values: int, rows: int, width: int) -> int:
    """Most uncompressed bytes a column chunk of ``values`` values of ``width`` bytes
    may declare: dictionary page plus indices, or plain values, plus levels."""
    return 2 * values * (width + 2) + 64 * rows + SLACK


def _width(pf: pq.ParquetFile, i: int, physical: str, name: str) -> int:
    if physical == "BYTE_ARRAY":
        return 4 + (ID_BYTES if name == SAMPLE_ID else MAX_CELL_BYTES)
    if physical == "FIXED_LEN_BYTE_ARRAY":
        return min(int(pf.schema.column(i).length), MAX_CELL_BYTES)
    return _WIDTH.get(physical, 16)
