"""``mmvm data check``: read every row of site files with all the store's checks and
summarise them; every file is checked, whatever the others hold."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmvm.cli import console
from mmvm.cli.data_common import handles, printable


def add_check(sub: argparse._SubParsersAction) -> None:
    """Add ``mmvm data check``."""
    c = sub.add_parser("check", help="validate site files and summarise them",
                       description="Read every row of each file with all checks "
                                   "(schema, ids, dtypes, NaN/inf) and print a "
                                   "summary. Exit status 1 if any file is invalid.")
    c.add_argument("files", nargs="+", metavar="FILE", help="site .parquet files")
    handles(c, run_check)


def check_file(path: str) -> dict:
    """Read every batch of a site file; summary dict, or raise DataError (also for a
    file without rows, which training and evaluation cannot use)."""
    from mmvm.data.store import DataError, iter_site_batches, read_site_meta

    if Path(path).is_dir():
        raise DataError(f"{path}: is a folder; give its site files, e.g. "
                        f"{Path(path) / '*.parquet'}")
    meta = read_site_meta(path)
    rows = 0
    for batch in iter_site_batches(path, None, batch_size=4096):
        rows += len(batch)
    if rows == 0:
        raise DataError(f"{path}: no rows; training and evaluation need at least one "
                        f"sample (make or prepare the file again with samples)")
    return {"rows": rows, "tensors": meta["tensors"], "labels": meta["labels"],
            "columns": meta["columns"], "name": str(meta["dataset"].get("name", ""))}


def check_problem(path: str) -> tuple[dict | None, str | None]:
    """``(summary, None)`` for a valid file, ``(None, why)`` otherwise: whatever a
    file holds, :func:`check_file` is reported, never raised, so every file is
    checked."""
    from mmvm.data.store import DataError

    try:
        return check_file(path), None
    except DataError as e:
        return None, str(e)
    except MemoryError as e:
        return None, f"{path}: out of memory while checking ({e})"
    except Exception as e:  # noqa: BLE001 - a check must not stop at one file
        return None, (f"{path}: unexpected {type(e).__name__} while checking ({e}); "
                      f"please report it, the file is not valid")


def run_check(args: argparse.Namespace) -> int:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="site files")
    for col in ("file", "status", "rows", "modalities", "labels", "dataset"):
        # a long path wraps onto further lines instead of being cut with "…"
        table.add_column(col, overflow="fold", min_width=12 if col == "file" else None)
    errors = []
    for f in args.files:
        s, problem = check_problem(f)
        if problem is not None:
            errors.append(problem)
            table.add_row(Text(printable(f)), Text("invalid", style="red"), "", "", "", "")
            continue
        mods = "\n".join(f"{n} {'x'.join(map(str, t['shape']))} {t['dtype']}"
                         for n, t in s["tensors"].items()) or "-"
        labels = ", ".join(s["labels"])
        if len(labels) > 60:
            labels = f"{len(s['labels'])} columns"
        table.add_row(Text(printable(f)), Text("ok", style="green"), str(s["rows"]),
                      Text(printable(mods, 400)), Text(printable(labels) or "-"),
                      Text(printable(s["name"], 60)))
    console().print(table)
    for e in errors:
        print(f"error: {printable(e, 2000)}", file=sys.stderr)
    return 1 if errors else 0
