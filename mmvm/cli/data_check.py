"""``mmvm data check``: read every row of site files with all the store's checks and
summarise them; every file is checked, whatever the others hold. Each modality's
values as the model sees them (stored / scale) are shown; with ``--config`` they are
checked against its likelihoods (:mod:`mmvm.data.value_ranges`) and its shapes, and
without one a uint8 tensor stored with scale 1 (the model sees 0..255) is named.
Several sites' files are also joined by sample id (:func:`across_files`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmvm.cli import add_config_arguments, console
from mmvm.cli.data_common import handles, printable


def add_check(sub: argparse._SubParsersAction) -> None:
    """Add ``mmvm data check``."""
    c = sub.add_parser("check", help="validate site files and summarise them",
                       description="Read every row of each file with all checks "
                                   "(schema, ids, dtypes, NaN/inf, overflow once "
                                   "scaled) and print a summary with each modality's "
                                   "values as the model sees them (value / scale). "
                                   "With --config, also the config's shapes (an error) "
                                   "and the range its likelihoods expect (a warning). "
                                   "Several sites' files of one split: how they join "
                                   "by sample id, and samples split differently. "
                                   "Exit status 1 if any file is invalid.")
    c.add_argument("files", nargs="+", metavar="FILE", help="site .parquet files, or "
                   "site folders (their train.parquet and test.parquet)")
    add_config_arguments(c, None)
    handles(c, run_check)


def site_files(given: list[str]) -> list[str]:
    """The files to check: a site folder (as ``mmvm data config`` and ``site-dirs`` take
    them) stands for its ``train.parquet`` and ``test.parquet``."""
    out = []
    for g in given:
        split = [Path(g) / f"{s}.parquet" for s in ("train", "test")]
        out += [str(p) for p in split if p.is_file()] if Path(g).is_dir() and \
            any(p.is_file() for p in split) else [g]
    return out


def check_file(path: str) -> dict:
    """Read every batch of a site file; summary dict, or raise DataError (also for a
    file without rows, which training and evaluation cannot use)."""
    from mmvm.data.store import DataError, iter_site_batches, read_site_meta

    meta = read_site_meta(path)  # a folder: "give its site files"
    rows, ranges, ids = 0, {}, []
    for batch in iter_site_batches(path, None, batch_size=4096):
        rows += len(batch)
        ids += batch.sample_ids
        for name, x in batch.tensors.items():  # the model's input: value / scale
            lo, hi = float(x.min()) / batch.scales[name], float(x.max()) / batch.scales[name]
            old = ranges.get(name, (lo, hi))
            ranges[name] = (min(old[0], lo), max(old[1], hi))
    if rows == 0:
        raise DataError(f"{path}: no rows; training and evaluation need at least one "
                        f"sample (make or prepare the file again with samples)")
    return {"rows": rows, "tensors": meta["tensors"], "labels": meta["labels"],
            "columns": meta["columns"], "name": str(meta["dataset"].get("name", "")),
            "ranges": ranges, "ids": ids}


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


def config_problems(cfg, path: str, summary: dict) -> tuple[str | None, list[str]]:
    """``path`` against the config ``cfg``: a shape or vocabulary that does not fit
    (an error), and values outside the range its likelihoods expect (warnings);
    without a config, uint8 tensors stored with scale 1."""
    from mmvm.data import check_data_fits
    from mmvm.data.store import DataError
    from mmvm.data.value_ranges import unscaled_pixels, value_warnings

    ranges, stored = summary["ranges"], summary["tensors"]
    if cfg is None:
        return None, [f"{path}: {w}" for n, (_, hi) in ranges.items()
                      if (w := unscaled_pixels(n, stored[n], hi))]
    names = [m.name for m in cfg.model.modalities]
    if not set(names) & set(stored):
        return (f"{path}: holds none of the modalities of {cfg.source} ({names}); it "
                f"has {list(stored)}"), []
    try:
        check_data_fits(cfg.model.modalities, path, cfg.source)
    except DataError as e:
        return str(e), []
    return None, [w for spec in cfg.model.modalities if spec.name in ranges
                  for w in value_warnings(path, spec, stored[spec.name],
                                          *ranges[spec.name], cfg.train.amp)]


def run_check(args: argparse.Namespace) -> int:
    from rich.table import Table
    from rich.text import Text

    from mmvm.config import load_config
    from mmvm.data.label_names import bare_ids

    cfg = load_config(args.config, args.overrides) if args.config else None
    if args.overrides and cfg is None:
        raise ValueError("--set changes a --config; give the config too")
    table = Table(title="site files")
    for col in ("file", "status", "rows", "modalities", "labels", "dataset"):
        # a long path wraps onto further lines instead of being cut with "…"
        table.add_column(col, overflow="fold", min_width=12 if col == "file" else None)
    errors, warnings, seen, columns, valid = [], [], set(), {}, {}
    for f in site_files(args.files):
        s, problem = check_problem(f)
        seen.update(s["labels"] if s else ())
        if s:
            columns[f] = list(s["labels"])
            valid[f] = s
        if problem is None:
            problem, said = config_problems(cfg, f, s)
            warnings += said
        if problem is not None:
            errors.append(problem)
            table.add_row(Text(printable(f)), Text("invalid", style="red"), "", "", "", "")
            continue
        mods = "\n".join(f"{n} {'x'.join(map(str, t['shape']))} {t['dtype']} "
                         f"{_values(*s['ranges'][n])}"
                         for n, t in s["tensors"].items()) or "-"
        labels = ", ".join(s["labels"])
        if len(labels) > 60:
            labels = f"{len(s['labels'])} columns"
        table.add_row(Text(printable(f)), Text("ok", style="green"), str(s["rows"]),
                      Text(printable(mods, 400)), Text(printable(labels) or "-"),
                      Text(printable(s["name"], 60)))
    console().print(table)
    lines, joined, clashes = across_files(valid)
    for line in lines:
        print(line)
    warnings += label_missing(cfg, seen) + bare_ids(columns) + joined
    errors += clashes
    for w in warnings:
        print(f"warning: {printable(w, 2000)}", file=sys.stderr)
    for e in errors:
        print(f"error: {printable(e, 2000)}", file=sys.stderr)
    return 1 if errors else 0


def label_missing(cfg, labels: set[str]) -> list[str]:
    """The config's ``data.label`` where none of the files has it: the evaluation
    would refuse it after training."""
    import difflib

    if cfg is None or not cfg.data.label or not labels or cfg.data.label in labels \
            or cfg.eval.labels:  # per-label probes read their own columns
        return []
    near = difflib.get_close_matches(cfg.data.label, sorted(labels), 1, 0.0)
    return [f"{cfg.source}: data.label {cfg.data.label!r} is in none of these files "
            f"(their label columns: {', '.join(sorted(labels))}); the probes and "
            f"coherence read it: --set data.label={near[0]}"]


def across_files(found: dict[str, dict]) -> tuple[list[str], list[str], list[str]]:
    """What the sites' files say together: per split (``train.parquet``, ...) given
    from several sites, how joining them by sample id couples the modalities (a site
    prepared without ``--ids`` shares no sample: its modality would train as an
    independent VAE, which ``mmvm run`` only says at alignment); a sample in one
    site's test split and another's train split (an error: training refuses it);
    and, errors, classes the files number differently (joined, one id would mean two
    classes) or a sample they label differently. Lines to print, warnings and
    errors."""
    import numpy as np

    from mmvm.data.coupling import (
        coupling_counts,
        split_leak,
        uncoupled_warning,
        weak_coupling_note,
    )
    from mmvm.data.label_names import check_label_names
    from mmvm.data.labels import all_label_columns, read_labels
    from mmvm.data.store import DataError

    lines, warnings, errors, splits = [], [], [], {}
    for path in found:
        splits.setdefault(Path(path).name, []).append(path)
    try:
        check_label_names(list(found))
    except DataError as err:
        errors.append(str(err))
    for name, paths in splits.items():
        holders: dict[str, set] = {}
        for p in paths:
            for m in found[p]["tensors"]:
                holders.setdefault(m, set()).update(found[p]["ids"])
        if len(paths) > 1 and (apart := labels_named_apart(paths, found)):
            warnings.append(f"{name}: {apart}")
        if len(paths) > 1:  # what training reads: a sample two sites label apart
            try:
                read_labels(paths, sorted(set().union(*holders.values())),
                            all_label_columns(paths))
            except DataError as err:
                errors.append(str(err))
        if len(paths) < 2 or len(holders) < 2:  # one site, or one modality everywhere
            continue
        ids = np.array(sorted(set().union(*holders.values())), dtype=object)
        mask = np.stack([np.isin(ids, list(held)) for held in holders.values()], axis=1)
        c = coupling_counts(mask, list(holders))
        per = ", ".join(f"{m} {n:,}" for m, n in c["per_modality"].items())
        lines.append(f"{name}: the {len(paths)} files joined by sample id: "
                     f"{c['samples']:,} samples ({per}); {c['multimodal']:,} have two "
                     f"or more modalities, {c['complete']:,} all")
        if not c["multimodal"]:
            warnings.append(f"the {name} files share no sample id: every modality would "
                            f"train as an independent VAE (a federated run refuses "
                            f"them); check that the sites prepared with the same --ids")
        warnings += [f"{name}: {w}" for w in (
            uncoupled_warning(c["per_modality"], c["coupled"]),
            weak_coupling_note(c["per_modality"], c["coupled"])) if w]
    trains = splits.get("train.parquet", [])
    if len(trains) > 1 and (leak := split_leak(
            trains, [str(Path(p).with_name("test.parquet")) for p in trains])):
        errors.append(f"{leak} (mmvm train and mmvm run refuse these folders)")
    return lines, warnings, errors


def labels_named_apart(paths: list[str], found: dict[str, dict]) -> str | None:
    """Why sites whose label columns differ matter (a site of ``label`` beside one of
    ``label.finding``, the same classes: in a federated run the one without
    ``data.label`` got no probe and no judge, unsaid), or None."""
    cols = {p: set(found[p]["labels"]) for p in paths}
    if len({frozenset(c) for c in cols.values()}) < 2:
        return None
    from mmvm.data.label_names import class_names

    held = ", ".join(f"{Path(p).parent.name}: {', '.join(sorted(c)) or 'none'}"
                     for p, c in cols.items())
    named = {tuple(class_names([p], c)) for p in paths for c in cols[p]} - {()}
    same = " (the same class names: one label named two ways?)" if len(named) == 1 \
        and all(cols.values()) else ""
    return (f"the sites' label columns differ ({held}){same}: a federated run probes "
            f"and judges data.label at each site, and a site without it gets neither; "
            f"name a label alike at every site (prepare ... --label NAME=COLUMN)")


def _values(lo: float, hi: float) -> str:
    """``0..1``: a modality's values as the model sees them."""
    return f"{lo + 0.0:.3g}..{hi + 0.0:.3g}"  # never -0
