"""``mmvm train``: the centralized trainer on a dataset's Parquet files."""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mmvm.cli import MAIN_JOB_CONFIG, add_config_arguments

if TYPE_CHECKING:
    from mmvm.config import ExperimentConfig
    from mmvm.data.dataset import MultimodalDataset
    from mmvm.data.streaming import StreamingDataset
    from mmvm.training import TrainResult


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model centrally (the reference for federated runs)",
        description="Train the configured method on <data.root>/<data.train> (with "
        "data.folders: <data.root>/<folder>/<data.train> for each, joined by sample id). "
        "Resumes from <train.out_dir>/checkpoint.pt when the config matches. "
        "--set data.streaming=true reads the file row group by row group instead of "
        "loading it whole (with data.schedule=grouped; or with "
        "data.decoded_dir=FOLDER from a decoded copy there, in any order).")
    add_config_arguments(p, MAIN_JOB_CONFIG)
    p.add_argument("--fresh", action="store_true",
                   help="ignore an existing checkpoint in train.out_dir and start over "
                   "(the earlier run stays whole until the new run's first checkpoint; "
                   "then its eval.json and pictures are kept under their time)")
    p.add_argument("--no-progress", "--quiet", action="store_true",
                   help="hide the progress bar (--quiet, as mmvm data takes it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmvm.interrupts import sigterm_as_interrupt

    with sigterm_as_interrupt():  # a scheduler's or kill's stop: as Ctrl-C
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from mmvm.checkpoint import check_run_folder
    from mmvm.config import load_config
    from mmvm.folder_lock import folder_lock
    from mmvm.training import resolve_device

    cfg = load_config(args.config, args.overrides)
    out_dir = Path(cfg.train.out_dir)
    check_run_folder(out_dir)  # before any work: where the results go, and on what
    resolve_device(cfg.train.device)
    data = training_data(cfg)
    # two trainings writing one run folder would sweep each other's temp files and
    # interleave checkpoints: the second is refused, touching nothing, while one runs
    with folder_lock(out_dir, "another mmvm train"):
        result = _train(args, cfg, data, out_dir)
    if isinstance(result, int):
        return result
    print(summary(result, cfg.model.method))
    return 0


def _said(line: str) -> None:
    """A line as it happens: a log file or pipe (a batch job) buffers stdout, and a
    line per epoch would otherwise appear ~135 epochs late."""
    print(line, flush=True)


def _train(args: argparse.Namespace, cfg: ExperimentConfig, data, out_dir: Path
           ) -> TrainResult | int:
    """The run's result, or the exit status of a divergence or a stop (said)."""
    from mmvm.interrupts import Terminated
    from mmvm.training import TrainingDivergedError, train

    saved: list[int] = []  # epochs this call checkpointed
    before = file_identity(out_dir / "checkpoint.pt")  # to tell, after a stop, whose it is

    def checkpointed(epoch: int) -> None:
        saved.append(epoch)
        _set_aside_stale_outputs(out_dir)  # the run's first checkpoint replaced the old

    try:
        return train(cfg, data, resume=not args.fresh, show_progress=not args.no_progress,
                     log=_said, on_checkpoint=checkpointed)
    except TrainingDivergedError as err:  # the last checkpoint is intact: say so, no traceback
        print(f"mmvm train: error: {err} ({left_behind(out_dir, saved, args.fresh, before)})",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM: a line, not a traceback, and
        term = isinstance(err, Terminated)  # what is safe
        print(f"mmvm train: {'terminated (SIGTERM)' if term else 'interrupted'}; "
              f"{left_behind(out_dir, saved, args.fresh, before)}"
              f"{resume_hint(out_dir, saved, args.fresh, before)}", file=sys.stderr)
        return 143 if term else 130
    finally:  # only when this call wrote a checkpoint: a copied run folder (cp -r)
        if saved or file_identity(out_dir / "checkpoint.pt") not in (before, None):
            _set_aside_stale_outputs(out_dir)  # has its files' times in any order


def training_data(cfg: ExperimentConfig) -> MultimodalDataset | StreamingDataset:
    """The train split the config names, checked: there, fitting the modalities, not
    empty (each problem names the files)."""
    from mmvm.data import check_data_fits, open_dataset
    from mmvm.data.coupling import split_leak
    from mmvm.data.labels import all_label_columns
    from mmvm.data.value_ranges import range_warnings

    paths = cfg.data.files("train")
    names = [m.name for m in cfg.model.modalities]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; "
                                    f"{_how_to_make(names, cfg.source, cfg.data.root, path)}")
    check_data_fits(cfg.model.modalities, paths, cfg.source)
    if len(paths) > 1 and (leak := split_leak(paths, cfg.data.files("test"))):
        raise ValueError(leak)
    for line in range_warnings(cfg.model.modalities, paths, cfg.train.amp):
        print(f"mmvm train: warning: {line}", file=sys.stderr)  # trains all the same
    have = all_label_columns(paths)
    if have and cfg.data.label not in have and not cfg.eval.labels:  # evaluate refuses
        close = difflib.get_close_matches(cfg.data.label, have, 1, 0.0)
        print(f"mmvm train: warning: no label column {cfg.data.label!r} (data.label) in "
              f"the data; its label columns: {', '.join(have)}. Training needs none, "
              f"but mmvm evaluate's probes and coherence will"
              + (f": e.g. --set data.label={close[0]}" if close else ""), file=sys.stderr)
    missing = [c for c in cfg.eval.labels if not fnmatch.filter(have, c)]
    if missing:  # a config copied from mimic_cxr.toml probes its 14 findings
        print(f"mmvm train: warning: eval.labels {', '.join(missing)} match no label "
              f"column of the data ({', '.join(have) or 'none'}); training needs none, "
              f"but mmvm evaluate will refuse them: e.g. --set 'eval.labels="
              f"{json.dumps(have[:3])}', or --set 'eval.labels=[]' to probe data.label",
              file=sys.stderr)
    for line in held_out_problems(cfg):  # found now, not after hours of training
        print(f"mmvm train: warning: {line}", file=sys.stderr)
    data = open_dataset(paths, names, cfg.data, limit=cfg.data.max_train)
    if len(data) == 0:
        raise ValueError(f"no samples to train on: {', '.join(map(str, paths))} "
                         f"{'has' if len(paths) == 1 else 'have'} no rows; make the data "
                         "again or set data.root to a folder with samples")
    if len(paths) > 1:
        print(joined_line(data, len(paths)))
    return data


def held_out_problems(cfg: ExperimentConfig) -> list[str]:
    """What is wrong with the config's test split, from the files' metadata: not
    there, unreadable, not fitting the modalities, no rows. With several folders
    (joined by sample id) one folder's gap leaves its modalities without test rows."""
    from mmvm.data import check_data_fits
    from mmvm.data.store import read_site_meta

    paths = cfg.data.files("test")
    refused = ("training needs no test split, but mmvm evaluate will refuse the run "
               "until it has one")
    partial = "mmvm evaluate scores that folder's modalities on no test sample"
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        verb = "does" if len(missing) == 1 else "do"
        return [f"no test split: {', '.join(missing)} {verb} not exist; " + (
            refused if len(missing) == len(paths) else partial)]
    try:
        check_data_fits(cfg.model.modalities, paths, cfg.source)
        empty = [str(p) for p in paths if read_site_meta(p)["num_rows"] == 0]
    except (ValueError, OSError) as err:  # DataError is a ValueError
        return [f"the test split cannot be used: {err}; {refused}"]
    if not empty:
        return []
    has = "has" if len(empty) == 1 else "have"
    return [f"the test split {', '.join(empty)} {has} no rows; "
            + (refused if len(empty) == len(paths) else partial)]


def file_identity(path: Path) -> tuple[int, int] | None:
    """(inode, modification time in ns) of ``path``, None when it is not there: an
    atomic write replaces the file, so a changed identity means it was written."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def left_behind(out_dir: Path, saved: list[int], fresh: bool,
                before: tuple[int, int] | None) -> str:
    """What a stopped ``mmvm train`` left in ``out_dir``: its own last checkpoint,
    an earlier run untouched, or nothing. ``before``: the checkpoint's
    :func:`file_identity` when this call started (a stop can fall between the
    checkpoint's write and the call that records it)."""
    ckpt = out_dir / "checkpoint.pt"
    if saved:
        return f"the checkpoint of epoch {saved[-1]} in {out_dir} is intact"
    if file_identity(ckpt) not in (before, None):
        return (f"this run's checkpoint in {ckpt} is intact (a resume rewrites its "
                "config.json and metrics.csv)")
    if not ckpt.is_file():
        return f"no checkpoint was written; nothing of this run is in {out_dir}"
    if fresh:
        return (f"{out_dir} still holds the earlier run, untouched: --fresh replaces it "
                "only when the new run's first checkpoint is written")
    return f"the last checkpoint in {out_dir} is unchanged"


def resume_hint(out_dir: Path, saved: list[int], fresh: bool,
                before: tuple[int, int] | None) -> str:
    """How to go on after Ctrl-C: a rerun resumes a checkpoint of this config."""
    ckpt = out_dir / "checkpoint.pt"
    if saved or file_identity(ckpt) not in (before, None):
        return f"; run the same command{' without --fresh' if fresh else ''} to resume from it"
    if ckpt.is_file() and not fresh:
        return "; a re-run resumes from it"
    return ""


def _set_aside_stale_outputs(run_dir: Path) -> None:
    """What scored or pictured an earlier model (eval.json, generations.png,
    latents.png, curves.png older than the run's checkpoint) is kept under its time
    (as ``mmvm evaluate`` keeps earlier evaluations), so that ``mmvm report`` does not
    pair this run's config with it."""
    from mmvm.cli.earlier import keep_earlier
    from mmvm.reporting.collect import RUN_IMAGES

    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        return
    made = ckpt.stat().st_mtime
    for name in (*(f"{k}.png" for k in RUN_IMAGES), "eval.json"):
        path = run_dir / name
        if not (path.is_file() and path.stat().st_mtime < made):
            continue
        kept = keep_earlier(path)
        if name == "eval.json":
            print(f"the evaluation of the earlier checkpoint is now {kept.name}; "
                  f"`mmvm evaluate --run {run_dir}` scores this one")
        else:
            print(f"{name} was made from the earlier checkpoint; it is now {kept.name}")


def joined_line(data, files: int) -> str:
    """What joining site files by sample id gave: samples per modality and how many
    couple them (ids that do not match across the files show here)."""
    from mmvm.data.coupling import (
        coupling_counts,
        uncoupled_warning,
        unmatched_ids,
        weak_coupling_note,
        weakly_coupled,
    )

    mask = data.mask.numpy()
    c = coupling_counts(mask, data.names)
    per = ", ".join(f"{m} {n:,}" for m, n in c["per_modality"].items())
    line = (f"joined {files} files by sample id: {c['samples']:,} samples ({per}); "
            f"{c['multimodal']:,} have two or more modalities, {c['complete']:,} all")
    if len(c["per_modality"]) > 1 and not c["multimodal"]:
        examples = unmatched_ids(data.sample_ids, mask, data.names,
                                 list(c["per_modality"])[:1])
        return line + ("\nwarning: the files share no sample id: no sample has two "
                       "modalities, so each one's mixture prior is its own posterior and "
                       "this trains independent unimodal VAEs (a federated run refuses "
                       "such sites). Check that the files name samples alike"
                       + (f"; e.g. {examples}" if examples else ""))
    alone = uncoupled_warning(c["per_modality"], c["coupled"])
    note = weak_coupling_note(c["per_modality"], c["coupled"])
    examples = unmatched_ids(data.sample_ids, mask, data.names, weakly_coupled(
        c["per_modality"], c["coupled"])) if alone or note else None
    if examples:
        if note:
            note += f"; e.g. {examples}"
        else:
            alone += f"; e.g. {examples}"
    return line + (f"\nwarning: {alone}" if alone else "") + (f"\nnote: {note}" if note
                                                              else "")


def summary(result: TrainResult, method: str) -> str:
    """The closing line: what this call trained (or that it had nothing to train)."""
    last = result.history[-1] if result.history else {}
    loss = f"{last.get('loss', float('nan')):.2f}"
    done, epochs = result.trained_epochs, len(result.history)
    folder = f"run folder: {result.out_dir} (checkpoint.pt, metrics.csv, config.json)"
    if done == 0:
        return (f"nothing trained: the run is already complete at epoch {epochs} "
                f"(last epoch's mean loss {loss}); {folder}. To train more, raise "
                f"train.epochs (e.g. --set train.epochs={2 * epochs}); to start over, "
                "add --fresh.")
    what = (f"epochs {result.start_epoch + 1}-{epochs} (resumed from epoch "
            f"{result.start_epoch})" if result.start_epoch
            else f"{epochs} epoch{'s' if epochs != 1 else ''}")
    return f"trained {method} for {what}; last epoch's mean loss {loss}; {folder}"


def _near(path: Path) -> str:
    """'did you mean X?' when one folder on the way to ``path`` has a near namesake."""
    from mmvm.atomic import existing_part

    existing = existing_part(path.parent)
    if existing == path.parent or not existing.is_dir():
        return ""
    rest = path.relative_to(existing).parts
    close = difflib.get_close_matches(rest[0], [p.name for p in existing.iterdir()], n=1)
    if not close:
        return ""
    return f"did you mean {existing / close[0] / Path(*rest[1:])}? If the data is not made yet, "


def config_recipe(source: str) -> tuple[str, str] | None:
    """The ``mmvm data make ... --out DIR`` command a config file names for its data
    (in a comment) and its DIR, or None. A config may be sized for data made with
    options (polymnist_cpu: the soft variant, 3,000 samples) that the dataset's
    default recipe, and a folder of a similar name, do not have."""
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None
    found = re.search(r"mmvm data (?:make|prepare) [^\n#()]*?--out (\S+)[^\n#()]*", text)
    return (found.group(0).rstrip(), found.group(1)) if found else None


def _how_to_make(names: list[str], source: str, root: str, path: Path) -> str:
    """What to do about missing data: the command that makes the data a config
    expects (its look-alike, if any; the config's own recipe first), after a folder
    of a near name where ``root`` is not the config's own."""
    from mmvm.data.hippocampus import MODALITIES as RATS
    from mmvm.data.polymnist import MODALITIES as POLYMNIST

    under = Path(root)
    sites = sorted(p.parent.name for p in under.glob(f"*/{path.name}")
                   if not p.parent.name.startswith(".")) \
        if path.parent == under and under.is_dir() else []  # not a preparer's staging
    if sites:  # site folders: join them
        import json
        import shlex

        # a TOML array of basic strings (JSON's escapes), quoted once for the shell
        listed = shlex.quote(f"data.folders=[{','.join(map(json.dumps, sites))}]")
        return (f"the folders under {root} hold {path.name} ({', '.join(sites)}): join "
                f"them by sample id with --set {listed} (or folders = "
                f"[...] in the config's [data])")
    held = sorted(p.name for p in path.parent.glob("*.parquet")) \
        if path.parent.is_dir() else []
    if held:  # a mistyped data.train / data.test / folder: no data to make
        return (f"{path.parent} holds {', '.join(held)}: check data.train, data.test "
                f"and data.folders (a typo?); making the data again would not help")

    for kind, mods in (("polymnist", POLYMNIST), ("hippocampus", RATS)):
        if tuple(names) == tuple(mods):
            recipe = config_recipe(source)
            real = (f" (a look-alike; recordings or images of your own: `mmvm data "
                    f"prepare {kind if kind == 'hippocampus' else 'polymnist_png'} SRC "
                    f"--out {root}`)")
            if recipe and recipe[0].startswith(f"mmvm data make {kind} "):
                command, out = recipe
                near = "" if out == root else _near(path)  # a typo'd root, maybe
                return (f"{near}make it first: "
                        f"`{command.replace(f'--out {out}', f'--out {root}')}`{real}")
            return f"{_near(path)}make it first: `mmvm data make {kind} --out {root}`{real}"
    recipe = config_recipe(source)
    if recipe and recipe[0].startswith("mmvm data prepare "):  # the config's own
        command, out = recipe
        near = "" if out == root else _near(path)
        return (f"{near}make it first: `{command.replace(f'--out {out}', f'--out {root}')}`"
                f" (SRC: the dataset as published; see `mmvm data prepare --help`), or "
                f"set data.root")
    return (f"{_near(path)}make it first with `mmvm data prepare DATASET SRC --out {root}` "
            "(see `mmvm data prepare --help`), or set data.root")
