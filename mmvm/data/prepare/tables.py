"""Your own tables -> site Parquet: one CSV / TSV / Parquet file per modality, one row
per sample, an id column, label columns, and the modality's numbers in every other
column (a lab's binned spike counts per trial, a clinic's lab values per visit).

The table is read with pyarrow, checked here (a column that is not a number, a
missing value: named with its row, sample id and column), and handed to
:func:`mmvm.data.prepare.arrays.prepare_arrays` as arrays, so the split, the label
numbering and the output are those of ``mmvm data prepare arrays``.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmvm.data.prepare import renamed
from mmvm.data.prepare.arrays import prepare_arrays
from mmvm.data.store import DataError
from mmvm.data.value_ranges import LARGE

READERS = (".csv", ".tsv", ".parquet")


def read_table(path: str | os.PathLike, text: Sequence[str] = ()) -> pa.Table:
    """A CSV (``.csv``), tab-separated (``.tsv``) or Parquet file as a pyarrow table;
    a CSV's ``text`` columns are read as written (ids "007" and "7" are two samples,
    not the number 7 twice). Other columns are typed by pyarrow: numbers, with empty
    cells and NA / NaN / null as missing."""
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            _unique_columns(path, pq.read_schema(path).names)
            return pq.read_table(path)
        if path.suffix in (".csv", ".tsv"):
            from pyarrow import csv

            table = csv.read_csv(path, parse_options=csv.ParseOptions(
                delimiter="\t" if path.suffix == ".tsv" else ","),
                convert_options=csv.ConvertOptions(
                    column_types=dict.fromkeys(text, pa.string())))
            _unique_columns(path, table.column_names)
            return table
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"{path}: not a readable table ({err}){_separator_hint(path)}"
                        ) from None
    raise DataError(f"{path}: expected a table file ({', '.join(READERS)})")


def _unique_columns(path: Path, names: Sequence[str]) -> None:
    """A column named twice is refused by name (pyarrow raised a KeyError, or dumped
    its own schema, once the column was looked up)."""
    twice = [c for c, n in Counter(names).items() if n > 1]
    if twice:
        where = [i + 1 for i, c in enumerate(names) if c == twice[0]]
        raise DataError(f"{path}: column name {twice[0]!r} appears {len(where)} times "
                        f"(columns {', '.join(map(str, where))}); rename all but one")


def _separator_hint(path: Path) -> str:
    """Why a CSV did not parse when its header is separated by ';' (a spreadsheet's
    export where the comma is the decimal mark)."""
    if path.suffix != ".csv":
        return ""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            header = fh.readline()
    except OSError:
        return ""
    if header.count(";") >= 1 and "," not in header:
        return ("; its header is separated by ';' (a spreadsheet export where the comma "
                "is the decimal mark?): save it with ',' between values and '.' as the "
                "decimal mark, or as .tsv or .parquet")
    return ""


def table_arrays(path: str | os.PathLike, id_column: str, labels: Sequence[str],
                 group_column: str | None = None, drop: Sequence[str] = ()
                 ) -> tuple[list[str], np.ndarray, dict[str, list[str]], list[str] | None,
                            list[str]]:
    """``(ids, numbers [N, F], {label column: values as text}, groups, their columns)``
    of one table: the numbers are every column but the id, label, group and ``drop``
    ones, in the file's order (int64 where every such column holds integers, else
    float64), and the names of those columns. Label
    and group columns the table lacks are left out (another table may hold them);
    the id column and ``drop`` must be there."""
    groups_of = [group_column] if group_column else []
    table = read_table(path, [id_column, *groups_of])  # labels: NA, 1.0 read as such
    absent = [c for c in [id_column, *drop] if c not in table.column_names]
    if absent:
        raise DataError(f"{path}: no column {', '.join(map(repr, absent))} (its columns: "
                        f"{shown_columns(table)}){_separator_hint(Path(path))}")
    if table.num_rows == 0:  # its columns read as text: "not numbers" misled
        raise DataError(f"{path}: no rows below its header; a table of samples needs "
                        f"at least one")
    held = [c for c in [*labels, *groups_of] if c in table.column_names]
    named = [id_column, *held, *drop]
    ids = [str(v).strip() if v is not None else "" for v in
           table.column(id_column).to_pylist()]
    if "" in ids:
        raise DataError(f"{path}: {row_name(path, ids.index(''))} has no sample id "
                        f"(column {id_column!r}); every row needs one")
    twice = sorted({i for i, n in Counter(ids).items() if n > 1})
    if twice:
        raise DataError(f"{path}: sample id {twice[0]!r} is on more than one row "
                        f"({len(twice)} ids repeated); one row per sample")
    kept = [c for c in table.column_names if c not in named]
    odd = [c for c in kept if not (pa.types.is_integer(table.schema.field(c).type)
                                   or pa.types.is_floating(table.schema.field(c).type))]
    if odd:
        why = _misnamed(labels, groups_of, table, odd) or \
            _not_numbers(path, table, odd, ids)
        raise DataError(f"{path}: {why}")
    if not kept:
        raise DataError(f"{path}: no column of numbers besides {named}")
    x = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                         for c in kept])
    whole = all(pa.types.is_integer(table.schema.field(c).type) for c in kept)
    with np.errstate(invalid="ignore"):  # float32 holds what the files will
        bad = np.argwhere(~(np.abs(x) <= np.finfo(np.float32).max))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise DataError(f"{path}: {row_name(path, row, ids[row])}, column "
                        f"{kept[col]!r}: {x[row, col]} ({len(bad)} value"
                        f"{'s' * (len(bad) > 1)} missing, not finite or beyond float32's "
                        f"range in all); fill or drop them before preparing")
    text = {c: [_label_text(v) for v in table.column(c).to_pylist()]
            for c in labels if c in held}
    groups = [_label_text(v) for v in table.column(group_column).to_pylist()] \
        if group_column in held else None
    # integers stay integers, so the config snippet can say they look like counts
    return ids, x.astype(np.int64) if whole else x, text, groups, kept  # float64:
    # z-scored (--standardize) before float32, so a large offset keeps its small spread


def suspect_columns(name: str, path, columns: Sequence[str], x: np.ndarray,
                    standardized: bool) -> list[str]:
    """Notes on the columns of modality ``name`` that may not be measurements: one that
    never falls from row to row (a trial number, a time: an index read as a feature),
    and, unless the modality is standardized, those farthest from 0 when its values
    are (the warning that follows names no column)."""
    notes = []
    if len(x) >= 20:
        for c, v in zip(columns, x.T, strict=True):
            if (np.diff(v) >= 0).all() and len(np.unique(v)) >= 5:
                notes.append(f"{name}: column {c!r} of {path} never falls from row to "
                             f"row ({v[0]:.4g}..{v[-1]:.4g}): a trial number, an index "
                             f"or a time, read as a feature? --drop it if it is not a "
                             f"measurement")
    peak = np.abs(x).max(0) if len(x) else np.zeros(len(columns))
    if not standardized and peak.max(initial=0) > LARGE:
        far = [f"{columns[j]} ({x[:, j].min():.4g}..{x[:, j].max():.4g})"
               for j in np.argsort(-peak)[:3] if peak[j] > LARGE]
        notes.append(f"{name}: the columns farthest from 0: {', '.join(far)}")
    return notes


def _misnamed(labels: Sequence[str], groups: Sequence[str], table: pa.Table,
              odd: list[str]) -> str:
    """A ``--label`` or ``--group-column`` the table lacks whose name is close to one of
    its text columns (``stimuls`` for ``stimulus``): a typo, said as one, rather than
    that column not being a number."""
    for flag, names in (("--label", labels), ("--group-column", groups)):
        for name in names:
            near = difflib.get_close_matches(name, odd, n=1)
            if name not in table.column_names and near:
                return (f"no column {name!r} ({flag}); did you mean {near[0]!r}? (its "
                        f"columns: {shown_columns(table)})")
    return ""


def row_name(path: str | os.PathLike, r: int, sample: str | None = None) -> str:
    """Data row ``r`` (from 0) as a reader finds it: ``row 18`` and, in a CSV or TSV,
    the file's line below its header (``line 19``, where a spreadsheet shows it), then
    the row's sample id if given."""
    notes = [f"line {r + 2}"] * (Path(path).suffix in (".csv", ".tsv"))
    notes += [f"sample {sample!r}"] * (sample is not None)
    return f"row {r + 1}" + (f" ({', '.join(notes)})" if notes else "")


def _not_numbers(path, table: pa.Table, odd: list[str], ids: list[str]) -> str:
    """Why ``odd`` are not numbers: a column of numbers with a few cells that are not
    (``<0.5``, ``n/a``) is named by its first such cell, row and sample id (a fix of
    those cells keeps the column); a column of text by its name."""
    for c in odd:
        cells = table.column(c).to_pylist()
        bad = [r for r, v in enumerate(cells)
               if v is not None and str(v).strip() and not _number(v)]
        commas = [r for r in bad if _comma_readings(cells[r])]
        if commas and len(commas) * 2 >= len(bad) and len(bad) <= len(cells) // 2 \
                or commas and len(commas) == len(bad):  # numbers written with commas
            r = commas[0]
            text = str(cells[r]).strip()
            return (f"{row_name(path, r, ids[r])}, column {c!r}: {text!r} is "
                    f"not a number: {' or '.join(_comma_readings(text))}? Save the table "
                    f"with '.' as the decimal mark and no thousands separator")
        if bad and len(bad) <= len(cells) // 2:  # mostly numbers
            r = bad[0]
            return (f"{row_name(path, r, ids[r])}, column {c!r}: "
                    f"{cells[r]!r} is not a number ({len(bad)} such "
                    f"cell{'s' * (len(bad) > 1)} in the column); write a number there, or leave the cell empty if it is "
                    f"missing (then fill or drop the row)")
    return (f"columns {odd[:5]}{' ...' * (len(odd) > 5)} are not numbers; name them "
            f"with --label, --group-column or --drop")


def _comma_readings(value) -> list[str]:
    """What a number written with commas may mean: ``140,2`` a decimal comma (a
    spreadsheet saved in a locale that writes it so), ``1,250`` that or thousands,
    ``1,250,000`` thousands, ``1.250,5`` a decimal comma after dotted thousands;
    empty for anything else (text)."""
    text = str(value).strip()
    if re.fullmatch(r"[-+]?\d{1,3}(\.\d{3})+,\d+", text):
        return [f"a comma as the decimal mark ({text.replace('.', '').replace(',', '.')})"]
    out = []
    if re.fullmatch(r"[-+]?\d*,\d+", text):
        out.append(f"a comma as the decimal mark ({text.replace(',', '.')})")
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+", text):
        out.append(f"commas between thousands ({text.replace(',', '')})")
    return out


def _number(value) -> bool:
    try:
        float(str(value).strip())
    except ValueError:
        return False
    return True


def shown_columns(table: pa.Table, keep: int = 12) -> str:
    """A table's column names for a message, the first ``keep`` of them."""
    return ", ".join(table.column_names[:keep]) + (
        f", ... ({table.num_columns} in all)" * (table.num_columns > keep))


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
    modality (name -> file). Several tables must hold the same sample ids, in any
    order (rows follow the first table's); a label or group column may be in one
    table or in several that agree. ``labels``: label column (``label``,
    ``label.<name>``) -> the table column that holds it; ``split``: the keywords of
    :func:`prepare_arrays` (test_fraction, seed, name, force, progress, classes)."""
    labels = labels or {}
    read = {m: table_arrays(p, id_column, list(labels.values()), group_column, drop)
            for m, p in modalities.items()}
    first = next(iter(read))
    ids = read[first][0]
    numbers = {m: in_order(x, got, ids, modalities[m], modalities[first])
               for m, (got, x, _, _, _) in read.items()}
    standardize = split.get("standardize") or ()
    notes = [note for m, (_, x, _, _, cols) in read.items()
             for note in suspect_columns(m, modalities[m], cols, x,
                                         standardize is True or m in standardize)]
    columns = {src: merged(src, {modalities[m]: in_order(text[src], got, ids)
                                 for m, (got, _, text, _, _) in read.items()
                                 if src in text},
                           ids, list(modalities.values()))
               for src in labels.values()}
    held_groups = {modalities[m]: in_order(g, got, ids)
                   for m, (got, _, _, g, _) in read.items() if g is not None}
    groups = merged(group_column, held_groups, ids, list(modalities.values())) \
        if group_column else None
    if groups is not None and "" in groups:
        k = groups.index("")
        raise DataError(f"sample {ids[k]!r} has no group (column {group_column!r}, "
                        f"{groups.count('')} samples without one); give every sample "
                        f"its trial or patient")
    with tempfile.TemporaryDirectory(prefix="mmvm-tables-") as tmp:
        t = Path(tmp)
        said = {**{str(t / f"{m}.npy"): f"{modalities[m]}" for m in read},
                **{str(t / f"{c}.npy"): f"column {src!r}" for c, src in labels.items()},
                str(t / "ids.txt"): f"{modalities[first]} column {id_column!r}",
                str(t / "groups.txt"): f"column {group_column!r}"}
        (t / "ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
        for m, x in numbers.items():
            np.save(t / f"{m}.npy", x)
        for col, src in labels.items():  # .npy: a text file lost an empty last cell
            np.save(t / f"{col}.npy", np.array(columns[src], dtype=str))
        if groups is not None:
            (t / "groups.txt").write_text("\n".join(groups) + "\n", encoding="utf-8")
        try:
            return prepare_arrays(
                out_dir, {m: t / f"{m}.npy" for m in read}, ids=t / "ids.txt",
                labels={c: t / f"{c}.npy" for c in labels},
                groups=t / "groups.txt" if groups is not None else None,
                group_source=f"column {group_column!r}" if groups is not None else None,
                features={m: cols for m, (_, _, _, _, cols) in read.items()},
                sources={m: Path(p) for m, p in modalities.items()},
                notes=[*notes, *split.pop("notes", ())], **split)
        except (DataError, ValueError) as err:  # name the tables, not the temp files
            raise renamed(err, said) from None


def in_order(values, got: list[str], ids: list[str], path=None, first=None):
    """``values`` (rows in the order of ``got``) in the order of ``ids``; the two id
    lists must hold the same ids (``path`` and ``first`` name the tables)."""
    if got == ids:
        return values
    if set(got) != set(ids):
        only = sorted(set(got) - set(ids))
        missing = sorted(set(ids) - set(got))
        raise DataError(
            f"{path} and {first} do not hold the same samples: {len(only)} ids only in "
            f"{path}{f' (e.g. {only[0]!r})' if only else ''}, {len(missing)} only in "
            f"{first}{f' (e.g. {missing[0]!r})' if missing else ''}; prepare each "
            f"modality's table on its own (one site each, aligned when a run begins), "
            f"or keep the samples all tables hold")
    where = {i: k for k, i in enumerate(got)}
    order = [where[i] for i in ids]
    return values[order] if isinstance(values, np.ndarray) else [values[k] for k in order]


def merged(column: str, held: Mapping, ids: list[str], tables: list) -> list[str]:
    """One label or group column from the tables that hold it (``held``: table ->
    values in ``ids`` order): a cell empty in one table is taken from another; two
    tables that give a sample different values are refused."""
    if not held:
        raise DataError(f"no table has a column {column!r} (tables: "
                        f"{', '.join(map(str, tables))})")
    (path, out), *rest = held.items()
    out = list(out)
    for other, values in rest:
        for k, v in enumerate(values):
            if v and out[k] and v != out[k]:
                raise DataError(f"column {column!r}: sample {ids[k]!r} is {out[k]!r} in "
                                f"{path} and {v!r} in {other}")
            out[k] = out[k] or v
    return out
