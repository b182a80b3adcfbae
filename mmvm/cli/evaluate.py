"""mmvm evaluate: probes, coherence and reconstruction of a trained run.

The run's checkpoint fixes the model and the method (a --set of model.* or train.* is
ignored, with a note); the config gives the data and the [eval] settings (eval.labels
and eval.metric: per-label probes, e.g. AUROC per CheXpert finding): with --run and no
--config, the run's own (the data it trained on, a simulated federated run's too; a
deployment's stayed at the sites: give --set data.root=<folder>), with --set on top;
with --config, that file's (a note says when its data is not the run's). Coherence runs
when the data has a data.label column; labels are joined by sample id across the site
files, so a modality whose own file has none is judged by the labels the others hold,
and one with no labelled sample is left out of the probes and coherence with a warning.
Writes <run>/eval.json (its "settings": the [eval] and data settings this evaluation
used; an earlier one is kept as eval.<its time>.json; its "chance": the test labels'
majority-class rate, the floor of every accuracy; its "warnings": coherence not to
trust, also printed) and <run>/generations.png (image data; latents.png, coloured by
label, for vector data) and prints a table. The judges of
coherence show a progress bar while they train, on a terminal (--no-progress: never).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from mmvm.cli import MAIN_JOB_CONFIG, add_config_arguments
from mmvm.cli.earlier import replacing, write_keeping_earlier

if TYPE_CHECKING:
    import torch


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a trained run (probes, coherence, reconstruction)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, None)
    p.add_argument("--run", default=None, metavar="DIR",
                   help="run folder holding checkpoint.pt (default: the config's "
                   "train.out_dir). Without --config: the run's own config, so its own "
                   f"data; without either: {MAIN_JOB_CONFIG}")
    p.add_argument("--device", default="auto",
                   help="auto | cpu | cuda | cuda:<n> | mps (default: auto)")
    p.add_argument("--threads", type=_threads, default=None, metavar="N",
                   help="torch threads (default: torch's, one per core); the last "
                        "digits of an evaluation depend on it, as on the trainer's "
                        "train.num_threads (README: What computed a number)")
    p.add_argument("--no-coherence", action="store_true",
                   help="skip coherence (no classifiers are trained or loaded)")
    p.add_argument("--imputation-draws", type=_positive, default=1, metavar="S",
                   help="score imputation by its predictive log-likelihood over S draws "
                        "of each method's latent given the rest (default 1: the expected "
                        "score of one draw, as the reconstruction's)")
    p.add_argument("--no-plot", action="store_true",
                   help="do not write generations.png (image data) or latents.png")
    p.add_argument("--no-progress", "--quiet", action="store_true",
                   help="no progress bar while the coherence classifiers train "
                        "(--quiet, as mmvm data takes it)")
    p.set_defaults(func=run)


def _threads(text: str) -> int:
    from mmvm.config_ranges import MAX_THREADS  # torch.set_num_threads(10**8) segfaults

    value = _positive(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{text}: at most {MAX_THREADS}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: one or more")
    return value


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from mmvm.config import config_from_dict, load_config
    from mmvm.data.dataset import MultimodalDataset
    from mmvm.data.label_names import label_names_for
    from mmvm.data.labels import is_labelled, label_columns
    from mmvm.eval_settings import evaluated_with
    from mmvm.evaluation import evaluate_run
    from mmvm.finite import finite_latents
    from mmvm.jsonfile import json_bytes
    from mmvm.training import load_trained_model

    own = args.config is None and args.run is not None  # the run's own config
    cfg = None if own else load_config(args.config or MAIN_JOB_CONFIG, args.overrides)
    run_dir = Path(args.run or cfg.train.out_dir)
    device = preflight(args, run_dir)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model, state = load_trained_model(run_dir, device=str(device))
    # the run decides model and method; the command line the data and eval sizes
    raw = dict(state["config"])
    raw.pop("source", None)
    source = str(run_dir / "checkpoint.pt")
    run_cfg = config_from_dict(raw, source=source)
    if own:
        cfg = load_config(None, args.overrides, base=(raw, source))
    elif Path(cfg.data.root).resolve() != Path(run_cfg.data.root).resolve():
        from mmvm.federation.results import AT_THE_SITES

        trained = "recorded no data folder (its data stayed at the sites)" \
            if run_cfg.data.root == AT_THE_SITES else \
            f"trained on {run_cfg.data.root} (leave out --config to use it)"
        print(f"note: evaluating on data.root={cfg.data.root} (from {cfg.source}); the "
              f"run {trained}")
    cfg = dataclasses.replace(run_cfg, data=cfg.data, eval=cfg.eval)
    names = model.names
    at_the_sites(run_dir, cfg)
    for path in cfg.data.files("train") + cfg.data.files("test"):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; make the data first "
                                    "(mmvm data make ...) or set data.root")
    train_set = MultimodalDataset.from_parquet(cfg.data.files("train"), names,
                                               cfg.data.label, cfg.data.max_train)
    test_set = MultimodalDataset.from_parquet(cfg.data.files("test"), names, cfg.data.label,
                                              cfg.data.max_test)
    labelled = is_labelled(cfg, train=train_set, test=test_set)
    if cfg.eval.labels:  # a typo named before the judges train (minutes)
        label_columns(cfg.data.files("train"), cfg.eval.labels)
    classifiers = None
    judged = train_set.labels is not None  # coherence: one label a sample
    if labelled and not judged and not args.no_coherence:
        print(f"note: no coherence: its judges need one label per sample (data.label = "
              f"{cfg.data.label!r}), which these files lack; eval.labels are probed")
    if judged and not args.no_coherence:
        from mmvm.classifiers import classifiers_for

        classifiers = classifiers_for(cfg, device, log=print,
                                      progress=False if args.no_progress else None)
    with finite_latents(model, source):  # a diverged model: named, not sklearn's NaN
        result = evaluate_run(cfg, model, train_set, test_set, classifiers,
                              imputation_draws=args.imputation_draws)
    result["run"] = str(run_dir)
    result["epoch"] = state.get("epoch")
    result["trained_with"] = state.get("environment")  # the trainer's (mmvm.provenance)
    result["settings"] = evaluated_with(cfg, train_set, test_set)
    out = run_dir / "eval.json"
    # e.g. the federated server's, with coherence: never lost unseen, nor by a failed write
    kept = kept_eval = write_keeping_earlier(out, json_bytes(result))
    if kept is not None:
        print(f"mmvm evaluate: the earlier {out.name} of this run is now {kept}")
    names = label_names_for(cfg.data.files("test"), cfg.data.label)
    print_result(result, names)
    print(f"wrote {out}")
    if not args.no_plot:
        from mmvm.run_pictures import picture_name, run_picture

        drawn = {}

        def draw() -> None:  # the run's earlier picture (its server's, say) is kept
            with finite_latents(model, source):
                drawn.update(run_picture(model, cfg, test_set, run_dir,
                                         cfg.model.method, names))

        picture = run_dir / picture_name(cfg)
        kept = replacing(picture, draw, like=kept_eval)  # named as its eval.json
        if kept is not None and not drawn:  # nothing drawn: nothing replaced
            kept.unlink()
        elif kept is not None:
            print(f"mmvm evaluate: the earlier {picture.name} of this run is now {kept}")
        for path in drawn.values():
            print(f"wrote {path}")
        if not drawn:
            print("no picture: vector data without labels to colour the latents by")
    return 0


def preflight(args: argparse.Namespace, run_dir: Path) -> torch.device:
    """Before any work: the checkpoint is there, eval.json (and generations.png) can be
    written, the device exists; a note for --set the run ignores. Returns the device."""
    from mmvm.checkpoint import check_run_folder
    from mmvm.training import resolve_device

    if not (run_dir / "checkpoint.pt").is_file():
        raise FileNotFoundError(no_checkpoint(run_dir))
    check_run_folder(run_dir, ("eval.json", "generations.png", "latents.png")[
                         :1 if args.no_plot else 3],
                     key="--run" if args.run else "train.out_dir", elsewhere=False)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise ValueError(f"--device {args.device}: {err}") from None
    note = ignored_overrides(args.overrides, run_dir, args.run is None)
    if note:
        print(note)
    return device


def ignored_overrides(overrides: list[str], run_dir: Path, picks_run: bool) -> str | None:
    """A note naming each ``--set`` of model.* or train.*, which the run's checkpoint
    fixes (``train.out_dir`` picks the run when --run is not given), or None."""
    ignored = [item for item in overrides
               if (key := item.split("=", 1)[0].strip()).startswith(("model.", "train."))
               and not (key == "train.out_dir" and picks_run)]
    if not ignored:
        return None
    return (f"note: ignored --set {', '.join(ignored)}: the model and how it was trained "
            f"(model.*, train.*) are the run's, from {run_dir / 'checkpoint.pt'}; "
            "evaluate takes data.* and eval.* settings")


def no_checkpoint(run_dir: Path) -> str:
    """Why there is nothing to evaluate in ``run_dir``: a federated run (its
    results.json) may have ended without an assembled model, which no training
    brings back; anything else has not been trained yet."""
    from mmvm.federation.results import why_no_model
    from mmvm.reporting.collect import is_federated_summary

    results = run_dir / "results.json"
    try:
        summary = json.loads(results.read_text())
    except (OSError, ValueError):
        summary = None
    if not is_federated_summary(summary):
        if not run_dir.exists():
            return (f"--run {run_dir}: no such folder"
                    + f" (relative to {Path.cwd()})" * (not run_dir.is_absolute()))
        if run_dir.is_file():  # --run runs/x/checkpoint.pt
            return f"--run {run_dir} is a file; --run takes the run folder ({run_dir.parent})"
        return f"no checkpoint.pt in {run_dir}; train first (mmvm train) or pass --run DIR"
    return (f"{run_dir} is a federated run without an assembled model (no "
            f"checkpoint.pt): {why_no_model(summary)}. Each site's own evaluation of "
            f"its networks is in {results} (\"evaluation\")")


def at_the_sites(run_dir: Path, cfg) -> None:
    """A deployment's run records no data folder (its sites kept their files):
    evaluating its assembled model here needs data this user may read."""
    from mmvm.config import ConfigError
    from mmvm.federation.results import AT_THE_SITES

    if cfg.data.root == AT_THE_SITES:
        raise ConfigError(
            f"{run_dir} records no data folder (data.root = {AT_THE_SITES!r}): a "
            f"deployment's data stayed at the sites, or the run had eval-data = ''; each "
            f"site's own evaluation is already in {run_dir / 'results.json'} "
            f"(\"evaluation\"). To evaluate the "
            f"assembled model here, give data you may read: --set data.root=<folder>, "
            f"with --set 'data.folders=[\"site-a\",\"site-b\"]' when each site's "
            f"train.parquet and test.parquet are in a sub-folder of it (joined by "
            f"sample id)")


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def print_result(result: dict, class_names: list[str] | None = None) -> None:
    """A rich table: per modality probe, coherence from it, reconstruction NLL;
    ``class_names``: data.label's, in id order, to name the majority class."""
    from rich.table import Table

    from mmvm.cli import console as cli_console

    names = list(result["reconstruction"]["per_modality"])
    coh = result.get("coherence")
    probed = bool(result["probe"])  # unlabelled data: reconstruction only
    rows = probe_rows(result) if probed else f"no probes, {result['n_test']} test rows"
    table = Table(title=f"{result['method']}  beta={result['beta']:g}  ({rows})",
                  caption="recon NLL per sample: a modality's over the test samples that "
                          "hold it; the total sums each sample's modalities (the mean "
                          "row's probe is the modalities' mean); imputed: the NLL of the "
                          "modality decoded from the sample's other modalities; constant: "
                          "the NLL of one constant output for all, the training data's "
                          "median or mean at each pixel or value")
    table.add_column("modality")
    metric = {"accuracy": "acc"}.get(result.get("probe_metric", "accuracy"),
                                     result.get("probe_metric"))
    per_label = "probe_labels" in result  # the column: each modality's mean over labels
    if probed:
        table.add_column(f"probe {metric}" + (" (label mean)" if per_label else ""),
                         justify="right")
    if coh:
        for t in coh["names"]:
            table.add_column(f"coh -> {t}", justify="right")
    table.add_column("recon NLL", justify="right")
    imputed = result.get("imputation", {}).get("rest", {})
    if imputed:
        table.add_column("imputed NLL", justify="right")
    floor = result["reconstruction"].get("baseline", {})
    if floor:
        table.add_column("constant", justify="right")
    for i, n in enumerate(names):
        row = [n, _fmt(result["probe"].get(n))][:1 + probed]
        if coh:
            row += [_fmt(v) for v in coh["matrix"][i]]
        row.append(f"{result['reconstruction']['per_modality'][n]:.1f}")
        row += [f"{imputed[n]:.1f}" if n in imputed else "-"] * bool(imputed)
        row += [f"{floor[n]:.1f}" if n in floor else "-"] * bool(floor)
        table.add_row(*row)
    last = ["mean / total", _fmt(result["probe"].get("mean"))][:1 + probed]
    if coh:
        last += [f"cross {_fmt(coh['mean'])}"] + [""] * (len(coh["names"]) - 1)
    last.append(f"{result['reconstruction']['total']:.1f}")
    last += [""] * (bool(imputed) + bool(floor))
    table.add_row(*last, style="bold")
    console = cli_console()
    console.print(table)
    if "all" in result["probe"]:
        stacked = _fmt(result["probe"]["all"])
        console.print(f"pooled probe {stacked}: one classifier over every modality's "
                      f"latents, stacked as samples (low where the modalities arrange "
                      f"the classes otherwise, which each one's own probe cannot see; "
                      f"high does not prove one shared space: classes the modalities "
                      f"keep apart in separate regions are separable too, so read "
                      f"coherence, or a decoder fitted on one modality's latents and "
                      f"tested on another's)")
    if "probe_labels" in result:
        console.print(label_table(result["probe_labels"]))
    if "classifier_accuracy" in result:
        accs = ", ".join(f"{k} {_fmt(v)}" for k, v in result["classifier_accuracy"].items())
        console.print(f"coherence classifiers, accuracy on real test data: {accs}")
    if "chance" in result:  # of data.label: the per-label table has each label's
        console.print(("data.label " if per_label else "")
                      + chance_line(result["chance"], class_names),
                      markup=False)
    for line in result.get("warnings", []):
        console.print(f"warning: {line}", style="bold yellow", markup=False)


def probe_rows(result: dict) -> str:
    """``probe on 900 train, 100 test``, counting labelled rows where some are not."""
    rows = {"train": result["n_probe_train"], "test": result["n_test"]}
    known = result.get("n_labelled", rows)
    return "probe on " + ", ".join(
        f"{known[k]} {k}" if known[k] == n else f"{known[k]} labelled of {n} {k}"
        for k, n in rows.items())


def chance_line(chance: dict, names: list[str] | None = None) -> str:
    """``chance 0.150 (majority class 3 ...)``: what always answering the test labels'
    most frequent class scores, the floor of the probe accuracies and coherence; the
    class by its name where the files name their classes (``names``, id order)."""
    k = chance.get("majority_class")
    named = f"{k} = {names[k]!r}" if names and isinstance(k, int) and \
        0 <= k < len(names) else k
    return (f"chance {_fmt(chance.get('majority'))} (majority class "
            f"{named} of the test labels; uniform "
            f"{_fmt(chance.get('uniform'))}): accuracies at this level mean nothing")


def label_table(scores: dict):
    """Per-label probe scores (rows: label columns, columns: modalities), with the
    mean per modality and each label's chance; accuracy alongside another metric."""
    from rich.table import Table

    metric, names = scores["metric"], list(scores["labels"])
    both = metric != "accuracy"
    table = Table(title=f"per-label latent probes ({metric}"
                        + ("; accuracy in brackets)" if both else ")"))
    table.add_column("label")
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("chance", justify="right")

    def cell(r: dict, key: str, acc: str) -> str:
        return f"{_fmt(r.get(key))} ({_fmt(r.get(acc))})" if both else _fmt(r.get(key))

    cols = list(dict.fromkeys(c for n in names for c in scores["labels"][n]))
    for c in cols:
        rows = [scores["labels"][n].get(c, {}) for n in names]
        known = next((r for r in rows if "chance" in r), {})
        table.add_row(c, *[cell(r, metric, "accuracy") for r in rows],
                      cell(known, "chance", "majority"))
    table.add_row("mean", *[_fmt(scores["per_modality"][n]) for n in names], "",
                  style="bold")
    return table
