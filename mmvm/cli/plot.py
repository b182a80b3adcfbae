"""mmvm plot scatter|curves|latents|across: the paper's figures from saved results.

- scatter: reconstruction error vs probe accuracy / coherence from results files
  (JSON: a list of eval.json dicts or of flat rows; CSV: columns method, beta, seed,
  recon_nll, probe, coherence, as written by benchmarks/compare_methods.py), or from
  run folders / their eval.json. Runs are grouped as mmvm report groups them: one
  point per method, beta and settings, mean ± standard error over seeds; runs of
  other settings (e.g. other data sizes) are separate series ("mmvm (settings B)",
  listed under the plot), and so are rows of different results files. A seed given
  twice for the same point is not averaged (a warning says so).
- curves: training curves from one or more metrics.csv.
- latents: the posterior means mmvm encode wrote, one panel per (file, modality), all
  on the same axes (a common PCA above two dimensions), coloured by a label column
  (label, or e.g. label.sex): whether the modalities, or the sites, share one latent
  space.
- across: a probe fitted on each (file, modality)'s latent means scored on every
  other's (:mod:`mmvm.latents_across`), as a heat map, a table and a JSON beside it.

Each writes one PNG (--out must end in .png): never over one of its inputs, and
checked before any work; an earlier PNG of the same name is replaced.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mmvm.cli.outputs import check_file_out, input_files

# every PNG mmvm writes is matplotlib's (mmvm.plots.save_figure), which names itself
MATPLOTLIB_PNG = b"tEXtSoftware\x00Matplotlib"


def register(subparsers) -> None:
    p = subparsers.add_parser("plot", help="plot results (scatter), training curves, "
                              "latents or decoding across them",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="plot", metavar="KIND", required=True)
    s = sub.add_parser(
        "scatter", help="reconstruction error vs probe / coherence",
        description="Reconstruction error (x) against probe accuracy or coherence (y), "
        "one point per method, beta and settings (mean ± standard error over seeds), "
        "from results files (results.json / results.csv), runs' eval.json or run "
        "folders.")
    s.add_argument("results", nargs="+",
                   help="results.json / results.csv, or several runs' eval.json (or "
                   "run folders)")
    s.add_argument("--y", choices=("probe", "coherence", "probe_all", "probe_agg"),
                   default="probe", help="quantity on the y axis (default: probe)")
    s.add_argument("--chance", type=_fraction, default=None, metavar="P",
                   help="draw the chance level P as a dashed line (e.g. 0.1 for 10 "
                   "balanced classes; default: the results' own \"chance\" (majority "
                   "class rate), when they all give the same one)")
    s.add_argument("--out", default=None,
                   help="PNG to write (default: scatter_<y>.png next to the first file)")
    _handles(s, run_scatter)
    c = sub.add_parser(
        "curves", help="training curves from metrics.csv files",
        description="Training curves, one panel per metrics.csv column, one line per "
        "run, from metrics.csv files or run folders.")
    c.add_argument("metrics", nargs="+", help="metrics.csv files (or run folders)")
    c.add_argument("--keys", default=None,
                   help="comma-separated metrics.csv columns, one panel each "
                        "(default: those of loss,rec_nll,reg the files have)")
    c.add_argument("--out", default=None,
                   help="PNG to write (default: curves.png in the first run's folder; "
                        "metrics_curves.png in a federated run's, whose curves.png the "
                        "server drew)")
    _handles(c, run_curves)
    la = sub.add_parser(
        "latents", help="latent means from mmvm encode, by label",
        description="The posterior means mmvm encode wrote, one panel per (file, "
        "modality) on the same axes (a common PCA above two dimensions), coloured by a "
        "label column.")
    la.add_argument("latents", nargs="+", help="mmvm encode outputs (.parquet)")
    la.add_argument("--label", default=None, metavar="COLUMN",
                    help="label column colouring the points, e.g. label.sex (default: "
                    "label, one colour in files without it)")
    la.add_argument("--out", default=None,
                    help="PNG to write (default: <first file>.png next to it, "
                         "<first file>_<label>.png with --label)")
    _handles(la, run_latents)
    ac = sub.add_parser(
        "across", help="decode a label across modalities from mmvm encode outputs",
        description="Whether the modalities share one latent space: a probe fitted on "
        "each (file, modality)'s latent means scored on every other's (rows: fitted on, "
        "columns: scored on), every cell cross-validated: scored only on samples, and "
        "trials or patients where the files say them, that its probe was not fitted "
        "on, whichever set holds them. Coherence and "
        "the built-in probes agree with the pairing key whatever the pairing; this "
        "does not (a mirrored lab decodes below chance). Prints the table and writes "
        "the heat map and a JSON of the numbers.")
    ac.add_argument("latents", nargs="+", help="mmvm encode outputs (.parquet)")
    ac.add_argument("--label", default=None, metavar="COLUMN",
                    help="the label to decode (default: label, or the files' only one)")
    ac.add_argument("--folds", type=int, default=5, help="cross-validation folds, "
                    "2 or more (default %(default)s)")
    ac.add_argument("--out", default=None,
                    help="PNG to write (default: <first file>_across.png, "
                         "<first file>_across_<label>.png with --label; the JSON "
                         "beside it)")
    _handles(ac, run_across)


def _handles(parser: argparse.ArgumentParser,
             func: Callable[[argparse.Namespace], int]) -> None:
    """``func`` runs the command; its errors name it whole (``mmvm plot curves:``)."""
    parser.set_defaults(func=func, command=parser.prog.removeprefix("mmvm "))


def run_scatter(args: argparse.Namespace) -> int:
    from mmvm.plots import common_chance, scatter_runs
    from mmvm.reporting.collect import collect

    first = Path(args.results[0])
    out = args.out or (first if first.is_dir() else first.parent) / f"scatter_{args.y}.png"
    out = _png_out(out, args.results)
    collection = collect(args.results)
    for note in collection.notes:
        print(f"note: {note}", file=sys.stderr)
    chance = args.chance if args.chance is not None else common_chance(_chances(collection))
    written = scatter_runs(collection.runs, out, args.y, chance=chance, log=_warn)
    print(f"wrote {written}")
    return 0


def _png_out(out: str | Path, inputs: Sequence[str | Path]) -> Path:
    """``out`` checked before any work (:func:`~mmvm.cli.outputs.check_file_out`)."""
    return check_file_out(out, (".png",), "PNG images", input_files(inputs),
                          writer="mmvm plot", marks=(MATPLOTLIB_PNG,))


def _chances(collection) -> list[dict]:
    """The results rows, and the eval.json of the run folders (their "chance")."""
    from mmvm.reporting.collect import read_json

    docs = [r for f in collection.results for r in f.rows]
    evals = [r.folder / "eval.json" for r in collection.runs if r.folder is not None]
    docs += [d for p in evals if p.is_file() and isinstance(d := read_json(p), dict)]
    return docs


def _warn(message: str) -> None:
    print(f"mmvm plot scatter: warning: {message}", file=sys.stderr)


def run_curves(args: argparse.Namespace) -> int:
    from mmvm.plots import loss_curves

    paths = [Path(p) / "metrics.csv" if Path(p).is_dir() else Path(p) for p in args.metrics]
    # a federated run folder's curves.png is the server's (it marks absent sites)
    federated = (paths[0].parent / "results.json").is_file()
    out = args.out or paths[0].parent / ("metrics_curves.png" if federated else "curves.png")
    out = _png_out(out, paths)
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such metrics file")
    if args.keys is None:  # an older federated metrics.csv has no "loss" column
        from mmvm.plots import read_metrics

        have = set().union(*(read_metrics(p) for p in paths))
        keys = [k for k in ("loss", "rec_nll", "reg") if k in have]
    else:
        keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    print(f"wrote {loss_curves(paths, out, keys)}")
    return 0


def _by(args: argparse.Namespace) -> str:
    """The default output's mark of a ``--label`` given (another label's picture is
    another file, not written over): ``_label.sex``."""
    return "_" + re.sub(r"[^\w.-]", "_", args.label) if args.label else ""


def _default_label(paths: list[str]) -> str | None:
    """The column to colour by without ``--label``: ``label``, else the files' only
    label column (a lab's ``label.odor``, said); with several (MIMIC-CXR's
    ``label.<finding>``) None, the points drawn in one colour, and which to choose
    said."""
    from mmvm.data.store_format import is_label_column
    from mmvm.latents import latents_schema

    names = [n for p in paths for n in latents_schema(p).names]
    others = list(dict.fromkeys(filter(is_label_column, names)))
    if "label" in names or not others:
        return None
    if len(others) == 1:
        print(f"note: coloured by {others[0]}, the files' only label column")
        return others[0]
    shown = ", ".join(others[:6]) + (f", ... ({len(others)} in all)" * (len(others) > 6))
    print(f"note: no 'label' column: the points are drawn in one colour; colour "
          f"them by one of {shown} with --label COLUMN")
    return None


def _fraction(text: str) -> float:
    """A chance level: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a chance level is a fraction in "
                                         f"[0, 1] (e.g. 0.1 for 10 balanced classes)")
    return value


def run_latents(args: argparse.Namespace) -> int:
    from mmvm.latents import common_2d, latents_label_names, read_latents
    from mmvm.plot_latents import latent_2d

    first = Path(args.latents[0])
    out = _png_out(args.out or first.with_name(f"{first.stem}{_by(args)}.png"), args.latents)
    label = args.label if args.label is not None else _default_label(args.latents)
    mus, labels = read_latents(args.latents, label)
    dims = {v.shape[1] for v in mus.values()}
    if len(dims) > 1:
        raise ValueError(f"the files' latents have different sizes {sorted(dims)}: "
                         f"one model's (or one federated run's) outputs share a space")
    points, pca = common_2d(mus)
    if pca:
        points = {f"{k} (common PCA)": v for k, v in points.items()}
        labels = {f"{k} (common PCA)": v for k, v in labels.items()}
    names = latents_label_names(args.latents, label)  # the files' class names
    print(f"wrote {latent_2d(points, labels, out, label_names=names, share_axes=True)}")
    return 0


ACROSS_MARK = b'"written_by": "mmvm plot across"'  # in every JSON it writes


def run_across(args: argparse.Namespace) -> int:

    from mmvm.atomic import atomic_write
    from mmvm.jsonfile import json_bytes
    from mmvm.latents import (
        latents_label_names,
        latents_schema,
        read_latent_units,
        read_latents,
    )
    from mmvm.latents_across import across_matrix
    from mmvm.plot_across import across_heatmap

    first = Path(args.latents[0])
    out = _png_out(args.out or first.with_name(f"{first.stem}_across{_by(args)}.png"),
                   args.latents)
    json_path = check_file_out(out.with_suffix(".json"), (".json",), "JSON results",
                               input_files(args.latents), "--out (its .json)",
                               "mmvm plot across", (ACROSS_MARK,))
    label = args.label if args.label is not None else _default_label(args.latents)
    column = label or "label"
    files = [p for p in args.latents if column in latents_schema(p).names]
    for p in sorted(set(args.latents) - set(files)):  # an unlabelled site's latents
        print(f"note: {p}: no {column} column: left out", file=sys.stderr)
    if not files:
        raise ValueError(f"no file has the label column {column!r} (--label)")
    mus, labels = read_latents(files, label)
    for key in [k for k, y in labels.items() if not (y >= 0).any()]:
        print(f"note: {key}: no sample labelled ({label or 'label'}): left out",
              file=sys.stderr)  # not a row of 'every sample class 0' (a walkthrough)
        del mus[key], labels[key]
    if len(mus) < 2:
        raise ValueError(f"{len(mus)} labelled latent set(s): decoding across needs two "
                         f"modalities or files whose samples carry the label (--label)")
    result = across_matrix(mus, labels, read_latent_units(files), args.folds)
    names = latents_label_names(args.latents, label)
    result = {"written_by": "mmvm plot across", **result, "label": label or "label",
              "class_names": names or [], "files": [str(p) for p in files]}
    print(across_table(result))
    atomic_write(json_path, json_bytes(result))
    print(f"wrote {across_heatmap(result, out)} and {json_path}")
    return 0


def across_table(result: dict) -> str:
    """The matrix as text: a row per fitted-on set, chance and samples beside."""
    names = result["names"]
    width = max(len(n) for n in names)
    head = " " * (width + 5) + "  ".join(f"{'-> ' + str(k + 1):>6}"
                                         for k in range(len(names)))
    lines = [f"probe of {result['label']} fitted on each row's latents, scored on each "
             f"column's (-> k: row k's latents), {result['folds']}-fold cross-validated: "
             f"no sample, nor a sample of its group (trial, patient), scored that its "
             f"probe was fitted on", head]
    for k, (name, row) in enumerate(zip(names, result["matrix"], strict=True)):
        cells = "  ".join(f"{v:6.3f}" if v == v else f"{'-':>6}" for v in row)
        lines.append(f"{k + 1}. {name:<{width}}  {cells}   chance "
                     f"{result['chance'][name]:.3f}, {result['n'][name]} samples")
    return "\n".join(lines)

