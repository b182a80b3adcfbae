"""Test accuracy of the coherence judges per look-alike and training recipe.

Coherence is read by a classifier of real data per modality (``mmvm/classifiers.py``);
a judge at accuracy a caps coherence near a, and the paper's judges score >= 0.97.
This trains the judge of each modality for each recipe (epochs, width, shift and
rotation augmentation, ensemble size) on a PolyMNIST look-alike's train split and
scores it on the test split. The look-alike is made under ``--data`` on first use
(``mmvm data make polymnist``).

    python benchmarks/judges.py --variant translated                # ~40 min on 2 cores
    python benchmarks/judges.py --variant translated --recipes 20:16:2:10:3 --modalities m0

A recipe is ``epochs:width:shift[:rotate[:members]]`` (rotate in degrees, default 0;
members default 1). Rows are merged into ``<out>/<variant>.csv`` (a rerun of a recipe
replaces its rows); ``<out>/<variant>.json`` holds the last run's arguments and rows.
docs/protocol.md quotes the table.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from mmvm.help_format import DefaultsHelp
from mmvm.jsonfile import json_bytes
from mmvm.provenance import environment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


KEY = ("variant", "modality", "epochs", "width", "shift", "rotate", "members", "seed")


def recipe(text: str) -> tuple[int, int, int, float, int]:
    """``epochs:width:shift[:rotate[:members]]`` -> (epochs, width, shift, rotate, members)."""
    parts = text.split(":")
    try:
        if not 3 <= len(parts) <= 5:
            raise ValueError
        epochs, width, shift = (int(v) for v in parts[:3])
        rotate = float(parts[3]) if len(parts) > 3 else 0.0
        members = int(parts[4]) if len(parts) > 4 else 1
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"recipe {text!r}: expected epochs:width:shift[:rotate[:members]], "
            "e.g. 20:16:2 or 20:16:2:10:3") from None
    return epochs, width, shift, rotate, members


def label(r: tuple) -> str:
    epochs, width, shift, rotate, members = r
    return f"{epochs}:{width}:{shift}:{rotate:g}:{members}"


def merge(path: Path, rows: list[dict]) -> list[dict]:
    """Rows of ``path`` (older files lack rotate / members: 0 / 1) with ``rows``
    replacing those of the same key."""
    def key(r: dict) -> tuple:
        return tuple(str(float(r[k]) if k == "rotate" else r[k]) for k in KEY)

    old = []
    if path.exists():
        with path.open(newline="") as f:
            old = [{"rotate": 0.0, "members": 1, "member_accuracy": r["test_accuracy"], **r}
                   for r in csv.DictReader(f)]
    new = {key(r) for r in rows}
    return [r for r in old if key(r) not in new] + rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelp)
    p.add_argument("--variant", default="translated",
                   choices=("translated", "untranslated", "soft"),
                   help="PolyMNIST look-alike variant")
    p.add_argument("--data", default="",
                   help="look-alike folder (default data/polymnist-<variant>-judges)")
    p.add_argument("--recipes", nargs="+", type=recipe,
                   default=[recipe("20:16:0"), recipe("20:16:2")],
                   help="epochs:width:shift[:rotate[:members]] per recipe "
                        "(default: 20:16:0 20:16:2)")
    p.add_argument("--modalities", nargs="+", default=["m0", "m1", "m2"],
                   help="modalities to train judges for")
    p.add_argument("--seed", type=int, default=0, help="judge training seed")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/judges"),
                   help="results folder")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from compare_methods import ensure_data  # benchmarks/, on sys.path as a script

    from mmvm.classifiers import (
        ClassifierConfig,
        labelled_rows,
        predict,
        train_classifier,
    )

    torch.set_num_threads(args.threads)
    root = Path(args.data or ROOT / f"data/polymnist-{args.variant}-judges")
    paths = ensure_data(root, args.variant)
    data = {name: (labelled_rows(paths["train"], name), labelled_rows(paths["test"], name))
            for name in args.modalities}  # read once, used by every recipe
    rows = []
    for epochs, width, shift, rotate, members in args.recipes:
        cfg = ClassifierConfig(epochs=epochs, width=width, shift=shift, rotate=rotate,
                               members=members, seed=args.seed)
        for name in args.modalities:
            (x, y, scale), (xt, yt, _) = data[name]
            t0 = time.perf_counter()
            model = train_classifier(x, y, int(y.max()) + 1, cfg, "cpu", scale)
            acc = float((predict(model, xt, scale=scale) == yt).float().mean())
            alone = [float((predict(m, xt, scale=scale) == yt).float().mean())
                     for m in getattr(model, "members", [model])]
            row = {"variant": args.variant, "modality": name, "train_images": len(x),
                   "test_images": len(xt), "epochs": epochs, "width": width, "shift": shift,
                   "rotate": rotate, "members": members, "seed": args.seed,
                   "test_accuracy": round(acc, 4),
                   "member_accuracy": "/".join(f"{a:.4f}" for a in alone),
                   "train_s": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(row, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{args.variant}"
    stem.with_suffix(".json").write_bytes(json_bytes({"args": vars(args) | {
        "recipes": [label(r) for r in args.recipes]}, "environment": environment(),
        "rows": rows}, indent=2))
    table = merge(stem.with_suffix(".csv"), rows)
    with stem.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(table)
    print("\n| recipe (epochs:width:shift:rotate:members) | " + " | ".join(args.modalities)
          + " |")
    print("|---|" + "---|" * len(args.modalities))
    for r in args.recipes:
        accs = [row["test_accuracy"] for row in rows
                if (row["epochs"], row["width"], row["shift"], row["rotate"],
                    row["members"]) == r]
        print(f"| {label(r)} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
    print(f"wrote {stem}.json and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
