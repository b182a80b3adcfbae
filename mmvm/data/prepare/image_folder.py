"""A site's own images: one folder of image files per modality -> site Parquet files.

The sample id of an image is its file name without the suffix (``p0042.png`` ->
``p0042``), so the frontal and lateral views of one study, kept at two sites, pair
when they are named alike. Labels and groups (the patient, for a split by patient)
come from a CSV table with a sample id column; samples it does not list have unknown
labels. Images are decoded with Pillow to ``mode`` (``L``: grey, ``RGB``) and resized
to ``size x size``, then everything goes through :func:`~mmvm.data.prepare.arrays.
prepare_arrays` (its checks, its split by sample id or group, its config sections).
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mmvm.data.prepare import Progress, renamed
from mmvm.data.prepare.arrays import prepare_arrays
from mmvm.data.prepare.dicom import PICTURES, is_dicom
from mmvm.data.prepare.dicom import SUFFIXES as DICOM_SUFFIXES
from mmvm.data.prepare.images import conversion_notes, load_image
from mmvm.data.store import DataError

SUFFIXES = PICTURES + DICOM_SUFFIXES


def image_files(folder: str | os.PathLike) -> dict[str, Path]:
    """``{sample id: file}`` of the image files directly in ``folder``: by suffix, the
    id the name without it, or DICOM files of another or no suffix (by content; the
    id the whole name: ``IM000123``, ``1.2.840...604688``); a DICOMDIR is the export's
    index, not an image. :class:`DataError` when there are none or two share an id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of images")
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.upper() == "DICOMDIR":
            continue
        known = path.suffix.lower() in SUFFIXES
        if known or is_dicom(path):
            sid = path.stem if known else path.name
            if sid in out:
                raise DataError(f"{folder}: {out[sid].name} and {path.name} would both "
                                f"be sample {sid!r}; one image per sample id")
            out[sid] = path
    if not out:
        raise DataError(f"{folder}: no image files ({', '.join(SUFFIXES)}, or DICOM "
                        f"without a suffix)")
    return out


def unread_note(folder: str | os.PathLike, found: Mapping[str, Path]) -> str | None:
    """What ``folder`` holds that :func:`image_files` did not take: subfolders (a
    PACS export nests patient / study / series) and other files, with examples."""
    folder = Path(folder)
    taken = {p.name for p in found.values()}
    subs = sorted(p.name for p in folder.iterdir() if p.is_dir())
    other = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in taken
                   and not p.name.startswith("."))
    parts = ([f"{len(subs)} subfolder{'s' * (len(subs) > 1)} ({', '.join(subs[:3])}"
              f"{' ...' * (len(subs) > 3)}): images are read from the folder itself, "
              f"not below it (move or link them up, named by sample id)"] if subs else []) \
        + ([f"{len(other)} other file{'s' * (len(other) > 1)} ({', '.join(other[:3])}"
            f"{' ...' * (len(other) > 3)}): not images"] if other else [])
    return f"{folder}: not read: " + "; ".join(parts) if parts else None


def read_table(path: str | os.PathLike, id_column: str) -> dict[str, dict[str, str]]:
    """``{sample id: {column: value}}`` of a CSV table with a header row; values
    separated by ',', ';' (a spreadsheet saved in a locale whose decimal mark is the
    comma) or tabs, whichever splits the header into the most fields."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = fh.readline()
            fh.seek(0)
            # the separator that splits the header into the most fields, quotes kept
            sep = max(",;\t", key=lambda d: len(next(csv.reader([header], delimiter=d))))
            reader = csv.DictReader(fh, delimiter=sep)
            rows = [(reader.line_num, row) for row in reader]  # the file's line
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV table ({e})") from None
    if id_column not in columns:
        raise DataError(f"{path}: no column {id_column!r} of sample ids (--id-column); "
                        f"its columns: {columns}")
    table: dict[str, dict[str, str]] = {}
    for i, row in rows:
        if not any((v or "").strip() for k, v in row.items() if k is not None):
            continue  # a spreadsheet's empty row (",,")
        if None in row or None in row.values():  # extra fields / too few
            got = len(columns) + len(row.get(None, [])) - list(row.values()).count(None)
            raise DataError(f"{path}: line {i} has {got} field{'s' * (got != 1)}, the "
                            f"header {len(columns)}: "
                            + ("an unquoted comma in a value? Quote it (\"pneumonia, "
                               "small\"), as spreadsheets export it" if None in row else
                               "leave a missing value empty, but keep its comma"))
        sid = (row[id_column] or "").strip()
        if sid in table:
            raise DataError(f"{path}: line {i}: sample {sid!r} is listed twice")
        table[sid] = {k: (v or "").strip() for k, v in row.items() if k != id_column}
    return table


def prepare_images(out_dir: str | os.PathLike, folders: Mapping[str, str | os.PathLike],
                   *, size: int, mode: str = "L", table: str | os.PathLike | None = None,
                   id_column: str = "sample_id", labels: Sequence[str] | None = None,
                   group_column: str | None = None, test_fraction: float = 0.2,
                   seed: int = 0, name: str = "images", force: bool = False,
                   progress: Progress | None = None,
                   classes: Mapping[str, Sequence[str]] | None = None,
                   white: float | str | None = None, fit: str = "stretch",
                   window: str = "file", skip_bad: bool = False,
                   split_from: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write ``train.parquet`` and ``test.parquet`` of the images in ``folders``
    (modality -> folder; every folder holds the same sample ids) under ``out_dir``.
    ``labels``: the table's columns to keep as labels (default: all but the id and
    group columns), written as ``label.<column>`` (``label`` stays ``label``), or
    ``NAME=COLUMN``, written as ``label.NAME`` (``label`` for NAME ``label``);
    ``classes``: a table column -> its class names in id order; ``white``: the pixel
    value that is white in images of more than 8 bits (default: the file type's);
    ``fit``: how a non-square image becomes square, ``window``: whether a DICOM file's
    VOI window is applied (:func:`~mmvm.data.prepare.images.load_image`);
    ``skip_bad``: leave out the samples whose image cannot be used in any modality
    (listed in a note), where without it nothing is written."""
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode {mode!r}: 'L' (grey) or 'RGB'")
    _check_size(size, mode)
    files = {m: image_files(f) for m, f in folders.items()}
    ids = sorted(next(iter(files.values())))
    for m, got in files.items():
        if set(got) != set(ids):
            other = next(iter(files))
            odd = sorted(set(got) ^ set(ids))[:3]
            raise DataError(f"{folders[m]} and {folders[other]} hold other sample ids "
                            f"({len(got)} vs {len(ids)} images; e.g. {odd}): the "
                            f"modalities of one site must hold the same samples")
    rows = read_table(table, id_column) if table is not None else {}
    if rows and not set(rows) & set(ids):
        raise DataError(f"{table}: none of the {len(ids)} images' sample ids (e.g. "
                        f"{ids[0]!r}, from its file name) is in the table's {id_column!r} "
                        f"column (e.g. {next(iter(rows))!r}): name the files by the "
                        f"table's ids, or give the column that holds them (--id-column)")
    columns = list(next(iter(rows.values()))) if rows else []
    # NAME=COLUMN: label.NAME ('label' for NAME label), as prepare table and arrays
    # name it; a bare COLUMN: label.COLUMN
    asked = [tuple(x.split("=", 1)) if "=" in x else (x, x) for x in labels] \
        if labels is not None else [(c, c) for c in columns if c != group_column]
    keep = [c for _, c in asked]
    key_of = {c: "label" if n == "label" else f"label.{n}" for n, c in asked}
    missing = [c for c in keep + ([group_column] if group_column else []) if c not in columns]
    if missing:
        raise DataError(f"{table}: no column {missing[0]!r}; its columns: {columns}")
    notes = table_notes(rows, ids, table) if rows else []
    notes += [n for m, got in files.items() if (n := unread_note(folders[m], got))]
    with tempfile.TemporaryDirectory(prefix="mmvm-images-") as tmp:
        tmp = Path(tmp)
        seen, whites = {m: Counter() for m in files}, {m: Counter() for m in files}
        bad: dict[str, dict[str, str]] = {}  # modality -> {sample id: why}
        arrays = {}
        for m, got in files.items():
            arrays[m], bad[m] = _decode(got, ids, mode, size, tmp / f"{m}.npy", progress,
                                        white, seen[m], fit, whites[m], window)
        notes += [n for m in files
                  for n in conversion_notes(m, seen[m], mode, size, fit, whites[m])]
        if any(bad.values()):
            ids, note = _without_bad(arrays, ids, bad, skip_bad)
            notes.append(note)
        (tmp / "ids.txt").write_text("\n".join(ids) + "\n")
        label_files = {}
        for c in keep:
            key = key_of[c]
            label_files[key] = tmp / f"{key}.npy"  # strings: an empty one is unknown
            np.save(label_files[key], np.array([rows.get(i, {}).get(c, "") for i in ids],
                                               dtype=str))
        groups = None
        if group_column:
            values = [rows.get(i, {}).get(group_column, "") for i in ids]
            lost = [i for i, v in zip(ids, values, strict=True) if not v]
            if lost:
                raise DataError(f"{table}: no {group_column!r} for samples {lost[:3]}"
                                f"{' ...' if len(lost) > 3 else ''}: every image needs "
                                f"its group to be split by it")
            groups = tmp / "groups.txt"
            groups.write_text("\n".join(values) + "\n")
        white = white if isinstance(white, str) or white is None else float(white)
        said = {str(label_files[key_of[c]]): f"{table} column {c!r}" for c in keep}
        try:  # errors name the table's columns, not the files made from them here
            return prepare_arrays(out_dir, arrays, ids=tmp / "ids.txt", labels=label_files,
                                  groups=groups, test_fraction=test_fraction, seed=seed,
                                  group_source=group_column and f"column {group_column!r} "
                                                                f"of {Path(table).name}",
                                  preparation={"mode": mode, "size": size, "fit": fit,
                                               "white": white, "window": window},
                                  name=name, force=force, progress=progress, notes=notes,
                                  split_from=split_from,
                                  sources={m: Path(f).resolve() for m, f in folders.items()},
                                  classes={key_of.get(c, f"label.{c}"): v
                                           for c, v in (classes or {}).items()})
        except (DataError, ValueError) as err:
            raise renamed(err, said) from None


def table_notes(rows: Mapping[str, dict], ids: Sequence[str], table) -> list[str]:
    """The table's ids without an image here and the images the table lacks, with
    examples: where a typo in an id shows (each side's count alone hides it)."""
    have, listed = set(ids), set(rows)
    stray = sorted(listed - have)
    unlisted = sorted(have - listed)
    notes = []
    if stray:
        verb = "names" if len(stray) == 1 else "name"
        notes.append(f"{table}: {len(stray)} of its {len(listed)} rows {verb} no image "
                     f"here (e.g. {', '.join(map(repr, stray[:3]))}): their labels are "
                     f"not used (a typo in an id, or another site's sample)")
    if unlisted:
        notes.append(f"{len(unlisted)} of the {len(ids)} images are not in {table} (e.g. "
                     f"{', '.join(map(repr, unlisted[:3]))}): their labels are unknown")
    return notes


def _check_size(size: int, mode: str) -> None:
    """Refuse a ``size`` no image network takes (the files would train nothing)."""
    from mmvm.networks import available_networks, get_network

    channels = 1 if mode == "L" else 3
    nets = {n: get_network(n) for n in available_networks("image")}
    if not any(net.accepts((channels, size, size)) for net in nets.values()):
        raise DataError(f"--size {size}: no image network takes {size}x{size} images ("
                        + "; ".join(f"{n} takes {net.takes}" for n, net in nets.items())
                        + "); prepare at one of those sizes")


MAX_SAID = 20  # failing images listed by name


def _decode(files: Mapping[str, Path], ids: Sequence[str], mode: str, size: int,
            path: Path, progress: Progress | None, white: float | str | None = None,
            seen: Counter | None = None, fit: str = "stretch",
            whites: Counter | None = None, window: str = "file"
            ) -> tuple[Path, dict[str, str]]:
    """The images of ``ids`` as one uint8 ``[N, C, size, size]`` .npy at ``path``,
    each decoded into it in turn (never the whole set in memory), and why each image
    that failed did (by sample id; its row stays zero)."""
    channels = 1 if mode == "L" else 3
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                    shape=(len(ids), channels, size, size))
    bad = {}  # every file that fails, said at once: not one fix and rerun per file
    for k, i in enumerate(ids):
        try:
            out[k] = load_image(files[i], mode, size, white=white, seen=seen, fit=fit,
                                whites=whites, window=window)
        except DataError as err:
            bad[i] = str(err)
        if progress is not None and (k % 64 == 0 or k == len(ids) - 1):
            progress(f"decoding {path.stem}", k + 1, len(ids))
    out.flush()
    del out
    return path, bad


def _without_bad(arrays: dict[str, Path], ids: list[str], bad: Mapping[str, dict],
                 skip: bool) -> tuple[list[str], str]:
    """The ids whose images all decoded, their rows kept in ``arrays`` (rewritten in
    place), and the note saying which were left out; without ``skip``, the refusal
    listing every unusable image."""
    why = [text for found in bad.values() for text in found.values()]
    shown = "\n  ".join(why[:MAX_SAID])
    more = f"\n  ... and {len(why) - MAX_SAID} more" if len(why) > MAX_SAID else ""
    lost = {i for found in bad.values() for i in found}
    if not skip or len(lost) == len(ids):
        fix = "fix or remove them (or --skip-bad leaves their samples out)" if not skip \
            else "none is left to prepare"
        counts = " and ".join(f"{len(f)} of the {len(ids)} {m} images"
                              for m, f in bad.items() if f)
        raise DataError(f"{counts} cannot be used; {fix}:\n  {shown}{more}")
    rows = np.array([k for k, i in enumerate(ids) if i not in lost])
    for path in arrays.values():
        src = np.load(path, mmap_mode="r")
        kept = path.with_name(f"{path.stem}.kept.npy")
        out = np.lib.format.open_memmap(kept, mode="w+", dtype=src.dtype,
                                        shape=(len(rows), *src.shape[1:]))
        for start in range(0, len(rows), 256):  # a block at a time, never the set
            out[start:start + 256] = src[rows[start:start + 256]]
        out.flush()
        del out, src
        os.replace(kept, path)
    return [ids[k] for k in rows], (
        f"{len(lost)} of the {len(ids)} samples left out (--skip-bad), an image of each "
        f"unusable:\n  {shown}{more}")
