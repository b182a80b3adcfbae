"""``mmvm data prepare arrays``: a user's own NumPy arrays -> site Parquet files."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmvm.cli.data_common import add_quiet, data_progress, handles, report_paths
from mmvm.cli.outputs import check_folder_out


def add_arrays(names: argparse._SubParsersAction) -> None:
    """Add ``mmvm data prepare arrays``."""
    text = "your own NumPy arrays: one .npy [N, *shape] per modality, ids, labels"
    q = names.add_parser("arrays", help=text, description=(
        f"{text}. The split is decided per sample id (a hash of seed and id), so sites "
        "that prepare their own modalities apart put each shared sample in the same "
        "split; with --groups per group (e.g. trial), so that overlapping windows of "
        "one trial never fall on both sides. Prints the [model.modalities] sections "
        "for a config."))
    q.add_argument("--modality", action="append", required=True, metavar="NAME=FILE.npy",
                   help="a modality's array, [N, C, H, W] uint8 for images (scaled by "
                        "255), else any numbers (float32 as is); repeatable")
    q.add_argument("--ids", metavar="FILE", help="sample ids in row order: a text file "
                   "(one per line) or .npy of strings/integers (default: row numbers, "
                   "which align only sites with the same rows in the same order)")
    q.add_argument("--groups", metavar="FILE", help="a group id per row (e.g. the trial "
                   "or patient; a text file, one per line, or .npy): split by group, so "
                   "that samples that are not independent (overlapping windows of one "
                   "trial) never fall in both train and test; every site gives the same "
                   "group for a shared sample")
    q.add_argument("--label", action="append", default=[], metavar="[NAME=]FILE",
                   help="labels [N]: class ids >= 0 (-1: unknown) or class names, in a "
                        ".npy or a text file (one per line; names become ids in sorted "
                        "order, listed with the config sections): column 'label', or "
                        "'label.NAME'; repeatable")
    _classes_option(q, "NAME", "the --label NAME (default: label)")
    _standardize_option(q)
    _split_and_output(q, "arrays")
    handles(q, _prepare_arrays)


def _standardize_option(q: argparse.ArgumentParser) -> None:
    q.add_argument("--standardize", nargs="*", metavar="NAME",
                   help="z-score each column of these modalities (none named: every "
                        "modality but images and non-negative integers, counts) by the "
                        "training split's mean and std, kept in the files' metadata: "
                        "lab values in clinical units (sodium ~140, platelets ~250,000) "
                        "otherwise overflow the first loss or outweigh the other columns")
    q.add_argument("--standardize-from", metavar="TRAIN.parquet",
                   help="with --standardize: use the scale another site's prepared "
                        "file was standardized with, for the modalities it holds, "
                        "instead of this site's own training rows: sites that hold the "
                        "same modality (horizontal, hybrid) should share one scale")


def _standardized(args: argparse.Namespace) -> dict:
    """The ``standardize`` and ``scale_from`` keywords of the two preparers."""
    from mmvm.data.prepare.standardize import scale_of

    if args.standardize_from and args.standardize is None:
        raise ValueError("--standardize-from needs --standardize (which modalities)")
    return {"standardize": () if args.standardize is None else args.standardize or True,
            "scale_from": scale_of(args.standardize_from) if args.standardize_from
            else None}


def _classes_option(q: argparse.ArgumentParser, key: str, which: str) -> None:
    q.add_argument("--classes", action="append", default=[], metavar=f"[{key}=]A,B,...",
                   help=f"a label's class names in id order ({key}: {which}), the same "
                        "list at every site: names are numbered by it instead of by the "
                        "sorted names one site's file holds (a site without one class "
                        "would shift the others' ids), and ids given as ids are named; "
                        "repeatable")


def _classes(items: list[str], default: str | None) -> dict[str, list[str]]:
    """``--classes`` as ``{key: [names]}`` (``default``: the key of a bare list)."""
    return {k: [n.strip() for n in v.split(",")]
            for k, v in _pairs(items, "--classes", default, "COLUMN=A,B,...").items()}


def _split_and_output(q: argparse.ArgumentParser, name: str) -> None:
    """The options every preparer of a site's own data shares: split and output."""
    q.add_argument("--test-fraction", type=float, default=0.2,
                   help="share of samples held out (default %(default)g)")
    q.add_argument("--seed", type=int, default=0, help="split seed (default %(default)s)")
    q.add_argument("--split-from", metavar="FOLDER",
                   help="another site's folder of site files: each sample it holds takes "
                        "its split there (its train.parquet: train; test, val: test), "
                        "by sample id, whatever preparer made it; the rest are split by "
                        "--seed and --test-fraction (a third site beside prepared "
                        "MIMIC-CXR views, say)")
    q.add_argument("--name", default=name, help="dataset name in the files' metadata")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--force", action="store_true",
                   help="write over the site files (.parquet) already in --out")
    add_quiet(q)


def _pairs(items: list[str], flag: str, default_key: str | None = None,
           form: str = "NAME=FILE.npy") -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep and default_key is None or sep and not key:
            raise ValueError(f"{flag} {item!r}: expected {form}")
        key, path = (key, path) if sep else (default_key, item)
        if key in out:
            raise ValueError(f"{flag}: {key!r} given twice")
        out[key] = path
    return out


def _prepare_arrays(args: argparse.Namespace) -> int:
    from mmvm.data.prepare.arrays import prepare_arrays

    check_folder_out(args.out)
    mods = _pairs(args.modality, "--modality")
    labels, classes = _label_columns(args, "[NAME=]FILE")
    with data_progress(not args.quiet) as cb:
        paths = prepare_arrays(args.out, mods, ids=args.ids, labels=labels,
                               groups=args.groups, test_fraction=args.test_fraction, seed=args.seed,
                               name=args.name, force=args.force, progress=cb,
                               classes=classes, split_from=args.split_from,
                               **_standardized(args))
    return _report(paths, args, args.ids is not None, args.groups)


def _label_columns(args: argparse.Namespace, form: str) -> tuple[dict, dict]:
    """``--label [NAME=]X`` and ``--classes [NAME=]A,B`` keyed by the label column
    they fill: ``label`` for a bare one, ``label.NAME`` else."""
    def column(k: str) -> str:
        return "label" if k == "label" else f"label.{k}"

    labels = {column(k): v for k, v in _pairs(args.label, "--label", "label", form).items()}
    classes = {column(k): v for k, v in _classes(args.classes, "label").items()}
    return labels, classes


def label_coverage(paths: dict) -> list[str]:
    """A line per label column with unknown entries (-1) in the written files: all
    unknown is a warning (nothing to probe with it here), some a note."""
    import numpy as np
    import pyarrow.parquet as pq

    lines = []
    schema = pq.read_schema(next(iter(paths.values())))
    for col in (c for c in schema.names if c == "label" or c.startswith("label.")):
        y = np.concatenate([pq.read_table(p, columns=[col]).column(col).to_numpy(
            zero_copy_only=False) for p in paths.values()])
        unknown = int((y < 0).sum())
        if unknown == len(y):
            lines.append(f"warning: {col}: every one of the {len(y):,} samples is unknown "
                         f"(empty, -1, or not listed by the labels' table: do its ids "
                         f"match?): nothing here to probe or judge with it; leave it out, "
                         f"or prepare it from the input that holds it")
        elif unknown:
            lines.append(f"note: {col}: {unknown:,} of {len(y):,} samples unknown: the "
                         f"probes and judges leave them out")
    return lines


def _report(paths: dict, args: argparse.Namespace, ids: bool, groups: str | None,
            group_flag: str = "--groups") -> int:
    """What was written, how it was split, and the config sections for it."""
    from mmvm.data.prepare.snippet import config_snippet
    from mmvm.data.prepare.standardize import scale_warnings
    from mmvm.data.store import read_site_meta

    report_paths(paths)
    rows = {k: read_site_meta(p)["num_rows"] for k, p in paths.items()}
    print(", ".join(f"{k} {n:,} rows" for k, n in rows.items()))
    for line in label_coverage(paths) + scale_warnings(paths["train"]):
        print(line)
    dataset = read_site_meta(paths["train"]).get("dataset") or {}
    for note in dataset.get("notes") or []:
        print(f"note: {note}")
    scaled = dataset.get("standardized")
    if scaled:
        print(f"standardized {', '.join(scaled)}: each column z-scored by the training "
              f"split's mean and std (in the files' metadata, dataset.standardized)")
    share = rows.get("test", 0) / max(sum(rows.values()), 1)
    if groups is not None and abs(share - args.test_fraction) > max(
            0.1, args.test_fraction / 2):
        print(f"note: the test split holds {share:.0%} of the samples (--test-fraction "
              f"{args.test_fraction:g}): whole groups fall on one side; with more groups, "
              f"or another --seed, it comes closer")
    if not ids:
        print("note: no --ids: the sample ids are the row numbers 0..N-1; they pair with "
              "other sites' samples only if those sites' rows are the same samples in the "
              "same order (give --ids otherwise)")
    by = "sample id" if groups is None else f"group ({groups})"
    if args.split_from:  # the other site's sides, said with how many it gave
        print(f"split as {dataset.get('split_by')}")
    else:
        print(f"split by {by} with --seed {args.seed} --test-fraction "
              f"{args.test_fraction:g}: every site must use the same two values (and "
              f"write the ids{'' if groups is None else ' and groups'} the same way) "
              f"for their shared samples to fall in the same split, or take another "
              f"site's with --split-from")
    if groups is None and not args.split_from:
        print("note: samples are split one by one; if several come from one trial or "
              f"patient (e.g. overlapping time windows), give {group_flag} so that none "
              f"of them is tested on after training on its neighbours")
    print(f"\n# for your config (kind, shape from the files; likelihood a starting "
          f"point):\n{config_snippet(paths)}")
    print(f"\n# or a whole config for the sites' folders: mmvm data config "
          f"{Path(paths['train']).parent} <the other sites' folders> --out "
          f"configs/<name>.toml")
    return 0


def add_tables(names: argparse._SubParsersAction) -> None:
    """Add ``mmvm data prepare table``."""
    text = "your own tables: a CSV, TSV or Parquet file per modality, a row per sample"
    q = names.add_parser("table", help=text, description=(
        f"{text}: an id column, label columns, and the modality's numbers in every "
        "other column (binned spike counts of one rat per trial, lab values per "
        "visit). A missing value or a column that is not a number is named with its "
        "row and sample id. The split and output are those of `mmvm data prepare "
        "arrays`. Prints the [model.modalities] sections for a config."))
    q.add_argument("--modality", action="append", required=True, metavar="NAME=FILE",
                   help="a modality's table (.csv, .tsv, .parquet); repeatable: the "
                        "tables then hold the same sample ids, in any order, and a "
                        "label column may be in any of them (a site that holds one "
                        "modality prepares it alone)")
    q.add_argument("--id-column", required=True, help="the tables' sample id column")
    q.add_argument("--label", action="append", default=[], metavar="[NAME=]COLUMN",
                   help="a column of class ids or names to keep as a label: column "
                        "'label', or 'label.NAME'; an empty cell is unknown; repeatable")
    q.add_argument("--group-column", metavar="COLUMN", help="a group per row (trial, "
                   "patient): split by group, so that no group is in train and test")
    q.add_argument("--drop", action="append", default=[], metavar="COLUMN",
                   help="a column that is neither numbers of the modality nor a label "
                        "(a date, a session name); repeatable")
    _classes_option(q, "NAME", "the --label NAME (default: label)")
    _standardize_option(q)
    _split_and_output(q, "table")
    handles(q, _prepare_tables)


def _prepare_tables(args: argparse.Namespace) -> int:
    from mmvm.data.prepare.tables import prepare_tables

    check_folder_out(args.out)
    labels, classes = _label_columns(args, "[NAME=]COLUMN")
    with data_progress(not args.quiet) as cb:
        paths = prepare_tables(args.out, _pairs(args.modality, "--modality",
                                                form="NAME=FILE"),
                               id_column=args.id_column, labels=labels,
                               group_column=args.group_column, drop=args.drop,
                               test_fraction=args.test_fraction, seed=args.seed,
                               name=args.name, force=args.force, progress=cb,
                               classes=classes, split_from=args.split_from,
                               **_standardized(args))
    return _report(paths, args, True, args.group_column, "--group-column")


def add_images(names: argparse._SubParsersAction) -> None:
    """Add ``mmvm data prepare images``."""
    text = "your own images: a folder of image files per modality, labels from a CSV"
    q = names.add_parser("images", help=text, description=(
        f"{text}. A file's name without its suffix is its sample id (p0042.png -> "
        "p0042): name the views of one study alike at every site. Images are decoded "
        "to grey (L) or RGB and resized to SIZE x SIZE (DICOM as its header says: "
        "rescale, VOI window, MONOCHROME1 inverted; the pixels only); labels and the "
        "patient (for a split by patient) come from a CSV table with a sample id "
        "column. Prints the [model.modalities] sections for a config."))
    q.add_argument("--modality", action="append", required=True, metavar="NAME=FOLDER",
                   help="a modality's folder of .png/.jpg/.bmp/.tif/.dcm files (and "
                        "DICOM files without a suffix); repeatable (the folders of one "
                        "site hold the same sample ids)")
    q.add_argument("--size", type=int, default=64, help="side in pixels (default "
                   "%(default)s; 28 and 224 are the other sizes the image networks take)")
    q.add_argument("--mode", choices=("L", "RGB"), default="L",
                   help="grey (L, one channel) or RGB (default %(default)s)")
    q.add_argument("--white-level", type=_white_level, metavar="VALUE",
                   help="images of more than 8 bits (16-bit PNG, TIFF): the pixel value "
                        "that is white (default: the file type's largest, 65535 for 16 "
                        "bits; 4095 for 12-bit data), or 'auto': each file's own, from "
                        "the bits its brightest pixel needs (a folder of 12- and 16-bit "
                        "exports); for DICOM files a number replaces the top of the "
                        "stored range of unwindowed files ('auto': the header's)")
    q.add_argument("--dicom-window", choices=("file", "none"), default="file",
                   help="DICOM: scale by the header's first VOI window (Window Center/"
                        "Width or LUT: as the modality's viewer shows it; the default) "
                        "or over the stored bits' whole range (none)")
    q.add_argument("--skip-bad", action="store_true",
                   help="leave out the samples an image of which cannot be used (in any "
                        "modality), listed in a note; without it they are listed and "
                        "nothing is written")
    q.add_argument("--fit", choices=("stretch", "pad", "crop"), default="stretch",
                   help="a non-square image made square: stretched (the default), "
                        "padded with black (proportions kept: a chest X-ray's heart "
                        "keeps its width against the chest) or cut to its central "
                        "square")
    q.add_argument("--table", metavar="CSV", help="labels (and groups) by sample id")
    q.add_argument("--id-column", default="sample_id",
                   help="the table's sample id column (default %(default)s)")
    q.add_argument("--label", action="append", metavar="[NAME=]COLUMN",
                   help="a table column to keep as a label (class ids or names): "
                        "'label.COLUMN', or 'label.NAME' ('label' for NAME label), as "
                        "prepare table names it: give another site's modality the same "
                        "name; repeatable (default: every column but the id and group "
                        "columns)")
    q.add_argument("--group-column", metavar="COLUMN", help="the table's group column "
                   "(e.g. patient): split by group, so no patient is in train and test")
    _classes_option(q, "COLUMN", "a label column of --table")
    _split_and_output(q, "images")
    handles(q, _prepare_images)


def _white_level(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a pixel value or 'auto'") from None
    if not value > 0 or value == float("inf"):  # every image was "outside 0..-5"
        raise argparse.ArgumentTypeError(f"{text!r}: the white level is a pixel value "
                                         f"above 0 (e.g. 4095 for 12-bit), or 'auto'")
    return value


def _prepare_images(args: argparse.Namespace) -> int:
    from mmvm.data.prepare.image_folder import prepare_images

    check_folder_out(args.out)
    for flag, given in (("--label", args.label), ("--group-column", args.group_column)):
        if given and not args.table:
            raise ValueError(f"{flag} names columns of --table, which is missing")
    with data_progress(not args.quiet) as cb:
        paths = prepare_images(args.out, _pairs(args.modality, "--modality"),
                               size=args.size, mode=args.mode, table=args.table,
                               id_column=args.id_column, labels=args.label,
                               group_column=args.group_column,
                               test_fraction=args.test_fraction, seed=args.seed,
                               name=args.name, force=args.force, progress=cb,
                               classes=_classes(args.classes, None),
                               white=args.white_level, fit=args.fit,
                               window=args.dicom_window, skip_bad=args.skip_bad,
                               split_from=args.split_from)
    return _report(paths, args, True, args.group_column, "--group-column")
