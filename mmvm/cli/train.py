"""``mmvm train``: the centralized trainer on a dataset's Parquet files."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from mmvm.cli import add_config_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model centrally (the reference for federated runs)",
        description="Train the configured method on <data.root>/<data.train> (with "
        "data.folders: <data.root>/<folder>/<data.train> for each, joined by sample id). "
        "Resumes from <train.out_dir>/checkpoint.pt when the config matches. "
        "--set data.streaming=true reads the file row group by row group instead of "
        "loading it whole.")
    add_config_arguments(p, "configs/polymnist.toml")
    p.add_argument("--fresh", action="store_true",
                   help="ignore an existing checkpoint in train.out_dir and start over")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmvm.config import load_config
    from mmvm.data import check_token_classes, open_dataset
    from mmvm.training import TrainingDivergedError, train

    cfg = load_config(args.config, args.overrides)
    paths = cfg.data.files("train")
    names = [m.name for m in cfg.model.modalities]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist; {_near(path)}"
                f"{_how_to_make(names, cfg.data.root)}")
    check_token_classes(cfg.model.modalities, paths)
    data = open_dataset(paths, names, cfg.data, limit=cfg.data.max_train)
    try:
        result = train(cfg, data, resume=not args.fresh, show_progress=not args.no_progress)
    except TrainingDivergedError as err:  # the last checkpoint is intact: say so, no traceback
        print(f"mmvm train: error: {err} (the last checkpoint in {cfg.train.out_dir}, "
              "if any, is unchanged)", file=sys.stderr)
        return 1
    last = result.history[-1] if result.history else {}
    print(f"trained {cfg.model.method} for {cfg.train.epochs} epochs; final loss "
          f"{last.get('loss', float('nan')):.2f}; run folder: {result.out_dir} "
          f"(checkpoint.pt, metrics.csv, config.json)")
    return 0


def _near(path: Path) -> str:
    """'did you mean X?' when one folder on the way to ``path`` has a near namesake."""
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the deepest folder on the way that exists
    if existing == path.parent or not existing.is_dir():
        return ""
    rest = path.relative_to(existing).parts
    close = difflib.get_close_matches(rest[0], [p.name for p in existing.iterdir()], n=1)
    if not close:
        return ""
    return f"did you mean {existing / close[0] / Path(*rest[1:])}? If the data is not made yet, "


def _how_to_make(names: list[str], root: str) -> str:
    """The command that makes the data a config expects (its look-alike, if any)."""
    from mmvm.data.hippocampus import MODALITIES as RATS
    from mmvm.data.polymnist import MODALITIES as POLYMNIST

    for kind, mods in (("polymnist", POLYMNIST), ("hippocampus", RATS)):
        if tuple(names) == tuple(mods):
            return f"make it first: `mmvm data make {kind} --out {root}`"
    return (f"make it first with `mmvm data prepare DATASET SRC --out {root}` "
            "(see `mmvm data prepare --help`), or set data.root")
