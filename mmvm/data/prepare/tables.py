"""Your own tables -> site Parquet: one CSV / TSV / Parquet file per modality, one row
per sample, an id column, label columns, and the modality's numbers in every other
column (a lab's binned spike counts per trial, a clinic's lab values per visit).

The table is read with pyarrow, checked here (a column that is not a number, a
missing value: named with its row, sample id and column), and handed to
:func:`mmvm.data.prepare.arrays.prepare_arrays` as arrays, so the split, the label
numbering and the output are those of ``mmvm data prepare arrays``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmvm.data.prepare.arrays import prepare_arrays
from mmvm.data.store import DataError

READERS = (".csv", ".tsv", ".parquet")


def read_table(path: str | os.PathLike) -> pa.Table:
    """A CSV (``.csv``), tab-separated (``.tsv``) or Parquet file as a pyarrow table."""
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if path.suffix in (".csv", ".tsv"):
            from pyarrow import csv

            return csv.read_csv(path, parse_options=csv.ParseOptions(
                delimiter="\t" if path.suffix == ".tsv" else ","))
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"{path}: not a readable table ({err})") from None
    raise DataError(f"{path}: expected a table file ({', '.join(READERS)})")


def table_arrays(path: str | os.PathLike, id_column: str, labels: Sequence[str],
                 group_column: str | None = None, drop: Sequence[str] = ()
                 ) -> tuple[list[str], np.ndarray, dict[str, list[str]], list[str] | None]:
    """``(ids, numbers [N, F], {label column: values as text}, groups)`` of one table:
    the numbers are every column but the id, label, group and ``drop`` ones, in the
    file's order (int64 where every such column holds integers, else float32)."""
    table = read_table(path)
    named = [id_column, *labels, *([group_column] if group_column else []), *drop]
    absent = [c for c in named if c not in table.column_names]
    if absent:
        shown = ", ".join(table.column_names[:12]) + (
            f", ... ({table.num_columns} in all)" * (table.num_columns > 12))
        raise DataError(f"{path}: no column {', '.join(map(repr, absent))} (its columns: "
                        f"{shown})")
    ids = [str(v).strip() for v in table.column(id_column).to_pylist()]
    kept = [c for c in table.column_names if c not in named]
    odd = [c for c in kept if not (pa.types.is_integer(table.schema.field(c).type)
                                   or pa.types.is_floating(table.schema.field(c).type))]
    if odd:
        raise DataError(f"{path}: columns {odd[:5]}{' ...' * (len(odd) > 5)} are not "
                        f"numbers; name them with --label, --group-column or "
                        f"--drop")
    if not kept:
        raise DataError(f"{path}: no column of numbers besides {named}")
    x = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                         for c in kept])
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise DataError(f"{path}: row {row + 1} (sample {ids[row]!r}), column "
                        f"{kept[col]!r}: {x[row, col]} ({len(bad)} values missing or not "
                        f"finite in all); fill or drop them before preparing")
    text = {c: [_label_text(v) for v in table.column(c).to_pylist()] for c in labels}
    groups = [str(v) for v in table.column(group_column).to_pylist()] \
        if group_column else None
    whole = all(pa.types.is_integer(table.schema.field(c).type) for c in kept)
    # integers stay integers, so the config snippet can say they look like counts
    return ids, x.astype(np.int64 if whole else np.float32), text, groups


def _label_text(value) -> str:
    """A label cell as ``load_labels`` reads text: empty for missing (unknown), whole
    numbers without ``.0`` (a CSV column with a gap is read as floats)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def prepare_tables(out_dir: str | os.PathLike, modalities: Mapping[str, str | os.PathLike],
                   *, id_column: str, labels: Mapping[str, str] | None = None,
                   group_column: str | None = None, drop: Sequence[str] = (),
                   **split) -> dict[str, Path]:
    """``train.parquet`` and ``test.parquet`` under ``out_dir`` from one table per
    modality (name -> file; several must hold the same ids in the same order: a site
    that holds one modality prepares it alone). ``labels``: label column (``label``,
    ``label.<name>``) -> the table column that holds it; ``split``: the keywords of
    :func:`prepare_arrays` (test_fraction, seed, name, force, progress, classes)."""
    labels = labels or {}
    read = {m: table_arrays(p, id_column, list(labels.values()), group_column, drop)
            for m, p in modalities.items()}
    (first, (ids, _, text, groups)), *rest = read.items()
    for m, (other, *_) in rest:
        if other != ids:
            raise DataError(f"{modalities[m]} and {modalities[first]} do not list the same "
                            f"sample ids in the same order: prepare each modality's table "
                            f"on its own (one site each), or sort them alike")
    first_path = modalities[first]
    with tempfile.TemporaryDirectory(prefix="mmvm-tables-") as tmp:
        t = Path(tmp)
        said = {**{str(t / f"{m}.npy"): f"{modalities[m]}" for m in read},
                **{str(t / f"{c}.txt"): f"{first_path} column {src!r}"
                   for c, src in labels.items()},
                str(t / "ids.txt"): f"{first_path} column {id_column!r}",
                str(t / "groups.txt"): f"{first_path} column {group_column!r}"}
        (t / "ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
        for m, (_, x, _, _) in read.items():
            np.save(t / f"{m}.npy", x)
        for col, src in labels.items():
            (t / f"{col}.txt").write_text("\n".join(text[src]) + "\n", encoding="utf-8")
        if groups is not None:
            (t / "groups.txt").write_text("\n".join(groups) + "\n", encoding="utf-8")
        try:
            return prepare_arrays(
                out_dir, {m: t / f"{m}.npy" for m in read}, ids=t / "ids.txt",
                labels={c: t / f"{c}.txt" for c in labels},
                groups=t / "groups.txt" if groups is not None else None,
                sources={m: Path(p) for m, p in modalities.items()}, **split)
        except (DataError, ValueError) as err:  # name the tables, not the temp files
            text = str(err)
            for temp, where in said.items():
                text = text.replace(temp, where)
            raise type(err)(text) from None
