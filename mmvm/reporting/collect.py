"""Turn the paths given to ``mmvm report`` into runs and benchmark tables.

A path may be

- a run folder: a centralized run (``checkpoint.pt``, ``config.json``, ``metrics.csv``
  and, once evaluated, ``eval.json`` and ``generations.png``) or a federated one
  (``results.json`` with the run's settings and sites, ``metrics.csv``, ``curves.png``
  and, where the server evaluated the assembled model, ``eval.json``);
- a benchmark results file (or a folder holding one): ``results.json`` (a list of
  ``eval.json`` dicts, or ``{"rows": [...]}``) or ``results.csv``. Rows with a
  ``method`` become runs; every row is also shown as the benchmark's own table.

Files may come from other sites: nothing is trusted beyond being JSON, CSV or PNG.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmvm.federation.server_state import STATE_FILE
from mmvm.reporting.cross_site import cross_site_metrics
from mmvm.reporting.runs import (
    FEDERATED_SETTINGS,
    WHERE_DATA_LIES,
    Run,
    apply_eval,
    apply_row,
    identity_from_config,
    integer,
    number,
    text,
)

RUN_IMAGES = ("generations", "latents", "curves")
NOT_A_RUN = "not a run folder (no eval.json, results.json or checkpoint.pt)"


@dataclass
class ResultsFile:
    path: Path
    rows: list[dict[str, Any]]
    images: list[Path] = field(default_factory=list)  # PNGs next to the file


@dataclass
class Collection:
    runs: list[Run] = field(default_factory=list)
    results: list[ResultsFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: corrupt JSON ({err})") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from None


def is_federated_summary(doc: Any) -> bool:
    """A federated run's ``results.json`` (mmvm.federation.results.write_results)."""
    return isinstance(doc, Mapping) and "settings" in doc and (
        "sites" in doc or "evaluation" in doc)


def collect(paths: Iterable[str | Path]) -> Collection:
    """Runs and results files from ``paths``; ValueError/FileNotFoundError on bad input."""
    out = Collection()
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if state_only(path):
            later = continued_by(path)
            out.notes.append(unfinished_note(path) if later is None else
                             f"{path}: left out: its training was resumed and finished "
                             f"in {later.name}, which holds its results")
            continue
        if empty_run(path):
            out.notes.append(f"{path}: left out: a federated run folder with nothing in "
                             f"it (the run failed before it wrote anything: its sites "
                             f"refused it, or its set-up failed; its log says why)")
            continue
        kind, target = classify(path)
        if kind == "run":
            out.runs.append(read_run_folder(target))
        else:
            results = read_results_file(target)
            out.results.append(results)
            out.runs.extend(attach_folders(runs_from_rows(results), target.parent))
    out.runs = merge_rows_into_folders(deduplicate(out.runs, out.notes), out.notes)
    disambiguate(out.runs)
    return out


def unfinished_note(path: Path) -> str:
    run = path.name.removeprefix("run-") if path.name.startswith("run-") else "<its id>"
    return (f"{path}: left out: a federated run that has not finished (it failed or was "
            f"stopped: server_state.pt, no results.json); continue it with its run config "
            f"and resume='{run}', then report it")


def empty_run(path: Path) -> bool:
    """A ``run-<id>`` folder that holds no file at all (a run refused at its first
    message leaves one), as a glob over a runs folder takes it."""
    return path.is_dir() and path.name.startswith("run-") and not any(
        p.is_file() for p in path.rglob("*"))


def state_only(path: Path) -> bool:
    """A federated run's folder with the server's state and no results of its own."""
    return path.is_dir() and (path / STATE_FILE).is_file() and not any(
        (path / f).is_file() for f in ("results.json", "eval.json", "checkpoint.pt"))


def continued_by(path: Path) -> Path | None:
    """The run folder beside ``path`` whose results say it resumed ``path``'s run (a
    resumed run writes its results in its own folder; the state stays in the first
    run's), or None: the run has not finished."""
    first = path.name.removeprefix("run-")
    for results in sorted(path.parent.glob("run-*/results.json")):
        try:
            doc = json.loads(results.read_text())
        except (OSError, ValueError):
            continue
        settings = doc.get("settings") if isinstance(doc, dict) else None
        if isinstance(settings, dict) and str(settings.get("resume") or "") == first:
            return results.parent
    return None


def classify(path: Path) -> tuple[str, Path]:
    """``("run", folder)`` or ``("results", file)``; a clear error otherwise."""
    if path.is_file():
        if path.name in ("eval.json", "checkpoint.pt", "config.json"):
            return "run", path.parent
        if path.suffix not in (".json", ".csv"):
            raise ValueError(f"{path}: not a results file (.json or .csv) nor a run folder")
        if path.suffix == ".json" and is_federated_summary(read_json(path)):
            return "run", path.parent
        return "results", path
    if any((path / f).is_file() for f in ("eval.json", "checkpoint.pt")):
        return "run", path
    for name in ("results.json", "results.csv"):
        if (path / name).is_file():
            doc = read_json(path / name) if name.endswith(".json") else None
            return ("run", path) if is_federated_summary(doc) else ("results", path / name)
    runs = [p.name for p in sorted(path.iterdir())
            if p.is_dir() and any((p / f).is_file() for f in ("eval.json", "results.json",
                                                              "checkpoint.pt"))]
    hint = (f"; it holds {len(runs)} run or results folders: pass {path}/* instead"
            if runs else "")
    raise ValueError(f"{path}: {NOT_A_RUN}{hint}")


def read_run_folder(folder: Path) -> Run:
    run = Run(name=folder.name or str(folder), source=str(folder), kind="centralized",
              folder=folder)
    summary = read_json(folder / "results.json") if (folder / "results.json").is_file() \
        else None
    config: Any = None
    if is_federated_summary(summary):
        run.kind, run.federated, config = "federated", summary, summary.get("config")
        settings = summary.get("settings")
        settings = settings if isinstance(settings, Mapping) else {}
        run.settings.update({f"federated.{k}": text(settings[k])
                             for k in FEDERATED_SETTINGS if k in settings})
    elif (folder / "config.json").is_file():
        config = read_json(folder / "config.json")
    elif (folder / "checkpoint.pt").is_file():
        config = checkpoint_config(folder / "checkpoint.pt")
    if isinstance(config, Mapping):
        identity_from_config(run, config)
    if not run.federated:  # a trainer's [eval] is not what `mmvm evaluate` was given
        run.settings = {k: v for k, v in run.settings.items() if not k.startswith("eval.")}
    run.settings["mode"] = run.kind
    if (folder / "eval.json").is_file():
        result = read_json(folder / "eval.json")
        if not isinstance(result, Mapping):
            raise ValueError(f"{folder / 'eval.json'}: not an evaluation (a JSON object)")
        source = "eval.json (assembled model)" if run.federated else "eval.json"
        apply_eval(run, result, source, folder / "eval.json")
    elif run.federated:
        site_evaluations(run, run.federated)
        cross_site_metrics(run, run.federated)
    if (folder / "metrics.csv").is_file():
        run.metrics_csv = folder / "metrics.csv"
        run.epoch = run.epoch if run.epoch is not None else last_epoch(run.metrics_csv)
    if (folder / "checkpoint.pt").is_file():
        run.checkpoint = folder / "checkpoint.pt"
    run.images = {k: folder / f"{k}.png" for k in RUN_IMAGES
                  if (folder / f"{k}.png").is_file()}
    return run


def last_epoch(path: Path) -> int | None:
    """The ``epoch`` of a metrics.csv's last row, if it reads as a whole number."""
    try:
        rows = read_csv_rows(path)
    except (ValueError, OSError):
        return None
    return integer(rows[-1].get("epoch")) if rows else None


def checkpoint_config(path: Path) -> Mapping | None:
    """The config saved in a checkpoint (weights-only load: no code runs)."""
    from mmvm.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    config = state.get("config") if isinstance(state, Mapping) else None
    return config if isinstance(config, Mapping) else None


def site_evaluations(run: Run, summary: Mapping) -> None:
    """A federated run without eval.json: each site's probe, its chance (the
    commonest test label's share) and test reconstruction of its own modalities; a
    modality several sites hold gets their mean. The run's reconstruction is the sum
    over its modalities, which is eval.json's total (the mean over samples of their
    modalities' sum; each site draws z from q(z | x_m), as the server's evaluation
    does) only where every sample holds every modality: so only there."""
    evaluation = summary.get("evaluation")
    if not isinstance(evaluation, Mapping):
        return
    seen: dict[str, dict[str, list[float]]] = {}
    for site in evaluation.values():
        for key, value in (site.items() if isinstance(site, Mapping) else ()):
            kind, _, name = str(key).partition("/")
            if kind in ("probe", "recon_nll", "majority") and name and \
                    number(value) is not None:
                seen.setdefault(name, {}).setdefault(kind, []).append(number(value))
    means = {m: {k: sum(v) / len(v) for k, v in kinds.items()} for m, kinds in seen.items()}
    for name, got in means.items():
        cell = {k: v for k, v in got.items() if k != "majority"}
        if cell:
            run.per_modality.setdefault(name, {}).update(cell)
    probe = number(summary.get("probe_mean"))
    if probe is not None:
        run.metrics["probe"] = probe
        run.metric_source = "sites' own probes (results.json)"
    chances = [got["majority"] for got in means.values() if "majority" in got]
    if probe is not None and chances:
        run.metrics["chance"] = sum(chances) / len(chances)
    config = summary.get("config") if isinstance(summary.get("config"), Mapping) else {}
    model = config.get("model") if isinstance(config.get("model"), Mapping) else {}
    mods = model.get("modalities")  # {name: table}, as the config file has them
    names = [str(n) for n in mods] if isinstance(mods, Mapping) else list(means)
    align = summary.get("alignment") if isinstance(summary.get("alignment"), Mapping) \
        else {}
    whole = align.get("samples") is not None and align.get("complete") == align["samples"]
    if whole and names and all("recon_nll" in means.get(n, {}) for n in names):
        run.metrics["recon_nll"] = sum(means[n]["recon_nll"] for n in names)


def read_results_file(path: Path) -> ResultsFile:
    if path.suffix == ".csv":
        rows = read_csv_rows(path)
    else:
        doc = read_json(path)
        if isinstance(doc, Mapping) and isinstance(doc.get("rows"), list):
            doc = doc["rows"]
        elif isinstance(doc, Mapping) and "method" in doc:
            doc = [doc]
        if not isinstance(doc, list):
            raise ValueError(f"{path}: not a results file (expected a list of runs or "
                             '{"rows": [...]})')
        rows = [r for r in doc if isinstance(r, Mapping)]
    images = sorted(p for p in path.parent.glob("*.png") if p.is_file())
    return ResultsFile(path, [dict(r) for r in rows], images)


def read_csv_rows(path: Path) -> list[dict[str, Any]]:
    """CSV rows; cells that read as numbers become numbers, the rest stay text."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error, OSError) as err:
        raise ValueError(f"{path}: not a readable CSV file ({err})") from None
    return [{str(k): _cell(v) for k, v in r.items() if k is not None and v not in (None, "")}
            for r in rows]


def _cell(value: str) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def runs_from_rows(results: ResultsFile) -> list[Run]:
    runs = []
    for i, row in enumerate(results.rows):
        if "method" not in row:
            continue
        name = str(row.get("run") or f"{results.path.parent.name}/{results.path.name}#{i}")
        run = Run(name=name, source=f"{results.path}#{i}", kind="results row")
        apply_row(run, row, results.path.name)
        runs.append(run)
    return runs


def attach_folders(runs: list[Run], parent: Path) -> list[Run]:
    """Each benchmark row gets the run folder beside its results file that trained it
    (same method, beta and seed, no conflicting setting; e.g. ``mmvm-beta2-seed0/`` of
    ``benchmarks/compare_methods.py``): its curves, pictures and checkpoint, and its
    name. The numbers stay the row's."""
    folders = []
    for p in sorted(parent.iterdir()):
        if p.is_dir() and any((p / f).is_file() for f in ("eval.json", "checkpoint.pt",
                                                          "metrics.csv")):
            try:
                folders.append(read_run_folder(p))
            except (ValueError, OSError):  # a damaged neighbour: the rows still count
                continue
    for run in runs:
        match = next((f for f in folders if compatible(f, run)), None)
        if match is None:
            continue
        folders.remove(match)
        run.name, run.folder, run.metrics_csv = match.name, match.folder, match.metrics_csv
        run.images, run.checkpoint = match.images, match.checkpoint
        run.epoch = run.epoch if run.epoch is not None else match.epoch
    return runs


def deduplicate(runs: list[Run], notes: list[str]) -> list[Run]:
    """One run given twice (its folder and a results file listing it, or a folder
    given and also found beside a results file) counts once; the folder, which has
    more to show, is kept, with numbers where either has them. Two folders are two
    runs, whatever their numbers: an exact federated run and its centralized
    reference have the same ones by design (the second was dropped as a copy)."""
    kept: dict[tuple, int] = {}
    where: dict[Path, int] = {}  # run folder -> its index in out
    out: list[Run] = []
    for run in runs:
        folder = run.folder.resolve() if run.folder is not None else None
        key = (run.method, run.beta, run.seed, tuple(sorted(run.metrics.items())))
        i = where.get(folder) if folder is not None else None
        if i is None and run.metrics and key in kept and (
                folder is None or out[kept[key]].folder is None):
            i = kept[key]
        if i is None:
            kept.setdefault(key, len(out))
            if folder is not None:
                where[folder] = len(out)
            out.append(run)
            continue
        notes.append(f"{run.source}: the same run as {out[i].source}; counted once")
        if out[i].folder is None and run.folder is not None:  # same numbers
            out[i] = run
            where[folder] = i
        elif run.metrics and (not out[i].metrics or run.kind == "results row"):
            lend_numbers(run, out[i])  # one folder: a row's numbers, whatever the order
    return out


def lend_numbers(source: Run, to: Run) -> None:
    to.metrics, to.per_modality = source.metrics, source.per_modality
    to.coherence_matrix, to.metric_source = source.coherence_matrix, source.metric_source
    to.environment, to.weights = source.environment or to.environment, source.weights or to.weights


def compatible(a: Run, b: Run) -> bool:
    """Same method, beta and seed, and no setting both record with different values."""
    same = (a.method, a.beta, a.seed) == (b.method, b.beta, b.seed) and a.seed is not None
    return same and all(b.settings.get(k, v) == v for k, v in a.settings.items()
                        if k not in ("mode", WHERE_DATA_LIES))


def merge_rows_into_folders(runs: list[Run], notes: list[str]) -> list[Run]:
    """A benchmark row with the numbers of an unevaluated run folder given alongside
    (same method, beta, seed, no conflicting setting) lends the folder its numbers:
    one run with both its numbers and its pictures, counted once."""
    folders = [r for r in runs if r.folder is not None and not r.metrics]
    out = []
    for run in runs:
        match = next((f for f in folders if run.folder is None and run.metrics
                      and compatible(f, run)), None)
        if match is None:
            out.append(run)
            continue
        folders.remove(match)
        lend_numbers(run, match)
        notes.append(f"{match.source}: numbers from {run.source} (same method, beta "
                     "and seed)")
    return out


def disambiguate(runs: list[Run]) -> None:
    """Runs with the same name get their parent folder's name in front."""
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
    for run in runs:
        if seen[run.name] > 1 and run.folder is not None:
            run.name = f"{run.folder.parent.name}/{run.folder.name}"
