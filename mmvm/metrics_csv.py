"""Reading a run's ``metrics.csv``: column -> numbers, or an error that names the file,
the line and the column (a hand-edited or truncated file is a user's input too)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def read_metrics(path: str | Path) -> dict[str, np.ndarray]:
    """A ``metrics.csv`` as column -> float array. Blank lines are skipped; a row with
    another number of values than the header, or a value that is not a number, raises
    ``ValueError`` naming the line."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            if header and "epoch" not in header:  # eval.json, results.csv, a site file
                raise ValueError(
                    f"{path}: not a run's metrics.csv (its first line names no 'epoch' "
                    f"column: {', '.join(header[:3])[:60]}{' ...' * (len(header) > 3)}); "
                    f"pass the run's folder or its metrics.csv")
            cols: dict[str, list[float]] = {k: [] for k in header}
            for row in reader:
                if row:
                    _append_row(cols, header, row, f"{path}, line {reader.line_num}")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text (UTF-8) CSV file") from err
    except csv.Error as err:
        raise ValueError(f"{path}: not a readable CSV file ({err})") from err
    if not header or not cols[header[0]]:
        raise ValueError(f"{path}: no rows")
    return {k: np.array(v) for k, v in cols.items()}


def _append_row(cols: dict[str, list[float]], header: list[str], row: list[str],
                where: str) -> None:
    if len(row) != len(header):
        raise ValueError(f"{where}: {len(row)} values for the header's {len(header)} "
                         "columns (a truncated or hand-edited row?)")
    for key, value in zip(header, row, strict=True):
        try:
            cols[key].append(float(value))
        except ValueError:
            raise ValueError(f"{where}, column {key!r}: {value!r} is not a number") from None
