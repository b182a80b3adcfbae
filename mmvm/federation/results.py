"""What a federated run leaves behind, in the same shapes as a centralized run.

``checkpoint.pt`` (when the sites hand in their weights) has the centralized
checkpoint's keys, so ``mmvm evaluate --run DIR`` works on it unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from mmvm.atomic import atomic_write
from mmvm.checkpoint import save_checkpoint
from mmvm.config import config_to_dict
from mmvm.federation.report import excluded, refusals, restarts, unaveraged
from mmvm.jsonfile import json_bytes
from mmvm.provenance import environment
from mmvm.training import build_model

# data.root of a deployment's run: only the sites know their files (node config data=)
AT_THE_SITES = "at the sites (node config data=...)"
WINDOW_FIELDS = ["window", "epoch", "step", "loss", "rec_nll", "reg", "bytes", "seconds",
                 "site_s", "train_s", "codec_s", "disk_s", "server_s", "ahead_s",
                 "estimated"]


def used_config(settings, out_dir: str | Path, data: str | None) -> dict:
    """The experiment config as the run used it: the run folder and the data it read
    replace the config file's ``train.out_dir`` and ``data.root`` (which a federated
    run does not use; in a deployment only the sites know their files)."""
    cfg = config_to_dict(settings.experiment)
    cfg["train"]["out_dir"] = str(out_dir)
    cfg["data"]["root"] = data or AT_THE_SITES
    return cfg


# run-config settings that only a simulation's sites read (what data they make or
# find, where they keep state and keys, how they are hosted): a deployment's sites take
# all of it from their own node config, so its results.json leaves them out
SIMULATION_ONLY = ("layout", "shards", "missing", "data_dir", "n_train", "n_test",
                   "state_dir", "keys_dir", "data_variant", "hippocampus", "site_hosts",
                   "decode_ahead", "site_dirs")
# what a simulation's sites make their data of: a simulation on the user's own site
# folders (site-dirs) made none, and its results.json must not suggest it did
MADE_DATA = ("layout", "shards", "missing", "data_dir", "n_train", "n_test",
             "data_variant", "hippocampus")


def recorded_settings(settings, simulated: bool) -> dict:
    """The run's settings as results.json keeps them: only those that shaped it."""
    s = {k: v for k, v in asdict(settings).items() if k != "experiment"}
    if s.get("exchange") != "steps":  # the steps of a window only where it has them
        s.pop("exchange_steps", None)
    if not simulated:
        return {k: v for k, v in s.items() if k not in SIMULATION_ONLY} | {"deployment": True}
    if s.get("site_dirs"):
        return {k: v for k, v in s.items() if k not in MADE_DATA}
    return s


def write_results(out_dir: str | Path, settings, result, data: str | None = None,
                  simulated: bool = True) -> dict[str, str]:
    """metrics.csv, results.json, checkpoint.pt (if the sites handed in their weights)
    and curves.png in ``out_dir``; ``data``: the data folder the sites read, where the
    server knows it (simulation); ``simulated``: False in a deployment (its settings
    then say ``"deployment": true`` and list no :data:`SIMULATION_ONLY` key; on the
    user's site folders, no :data:`MADE_DATA` key)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=WINDOW_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(result.history)
    atomic_write(out / "metrics.csv", buf.getvalue().encode())
    summary = {"settings": recorded_settings(settings, simulated),
               "config": used_config(settings, out, data),
               "sites": result.sites, "evaluation": result.evaluation,
               "bytes_total": result.bytes_total, "seconds": result.seconds,
               "environment": environment(),  # the server's (sites' hosts: not sent)
               "windows": len(result.history), "kept_weights": result.kept_weights,
               "alignment": result.alignment,
               "missed_windows": result.missed, "refused_windows": refusals(result.history),
               "excluded_sites": excluded(result.history),
               "restarted_sites": restarts(result.history),
               "unaveraged_windows": unaveraged(result.history),
               "not_evaluated": result.not_evaluated,
               "evaluation_errors": result.evaluation_errors,
               # each site's modalities scored from the others' test posteriors
               "cross_site": result.cross_site, "cross_site_notes": result.cross_notes}
    refused = result.model_refused or (assembled_problem(
        settings.experiment, result.model_state) if result.model_state else None)
    if refused:  # the run's results stay; no checkpoint that cannot be loaded
        summary["model_refused"] = refused
        result.model_state = None
    probes = [v for ev in result.evaluation.values() for k, v in ev.items()
              if k.startswith("probe/") and isinstance(v, (int, float))]
    if probes:
        summary["probe_mean"] = sum(probes) / len(probes)
    atomic_write(out / "results.json", json_bytes(summary))
    paths = {"metrics": str(out / "metrics.csv"), "results": str(out / "results.json")}
    if result.model_state and not refused:
        last = result.history[-1] if result.history else {"epoch": 0, "step": 0}
        save_checkpoint(out / "checkpoint.pt", {
            "config": used_config(settings, out, data),
            "model": {k: torch.as_tensor(v) for k, v in result.model_state.items()},
            "epoch": last["epoch"], "step": last["step"], "history": result.history,
            "federated": json.loads(json.dumps(summary, default=str))})  # plain types
        paths["checkpoint"] = str(out / "checkpoint.pt")
    try:  # a picture: what a site's extreme (finite) loss sums do to the axes must
        paths["curves"] = str(_plot_curves(out / "curves.png", result.history))
    except (ValueError, OverflowError) as err:  # not fail a run whose results stand
        print(f"mmvm: the loss curves were not drawn ({type(err).__name__}: {err}); "
              f"the numbers are in {out / 'metrics.csv'}", file=sys.stderr, flush=True)
    return paths


def why_no_model(summary: dict) -> str:
    """Why the federated run of ``summary`` (its results.json) has no assembled model
    (no checkpoint.pt): ``mmvm evaluate`` says so instead of asking for training."""
    collect = summary.get("settings", {}).get("collect_model")
    if summary.get("model_refused"):
        return (f"the server refused the weights the sites handed in "
                f"({summary['model_refused']})")
    if collect is False:
        return ("the run had collect-model = false, so every site kept its final "
                "weights; run again with --run-config 'collect-model=true' to get one")
    if summary.get("not_evaluated"):
        return (f"sites {summary['not_evaluated']} did not answer the final evaluation "
                f"(or failed it), so their weights stayed with them")
    if summary.get("kept_weights"):
        return (f"sites {summary['kept_weights']} kept their final weights (their node "
                f"config's allow-collect = false, or, secure, a shared modality they "
                f"were sent no mean of)")
    return "the sites handed in no weights"


def _plot_curves(path: Path, history: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    steps = [r["step"] for r in history]
    for ax, key, label in zip(axes, ("rec_nll", "reg", "bytes"),
                              ("reconstruction NLL / sample", "regulariser / sample",
                               "bytes per window"), strict=True):
        ax.plot(steps, [r[key] for r in history], marker="." if len(steps) < 50 else None)
        gaps = [r for r in history if r.get("missed") or r.get("refused")]
        if gaps:  # a site's terms there are estimated from its co-holders', or unknown
            ax.plot([r["step"] for r in gaps], [r[key] for r in gaps], "x", color="C3",
                    label="a site away or refused")
            ax.legend(fontsize=7)
        ax.set_xlabel("optimiser step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
    finally:  # (a figure that cannot be drawn is not kept open either)
        plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path


def assembled_problem(cfg, state: dict) -> str | None:
    """Why the weights the sites handed in do not make the config's model (missing,
    unknown or misshapen parameters, non-finite values), or None."""
    want = build_model(cfg).state_dict()
    missing, unknown = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unknown:
        return f"parameters missing {missing[:3]}, unknown {unknown[:3]}"
    for k, v in state.items():
        if tuple(v.shape) != tuple(want[k].shape):
            return f"{k} has shape {tuple(v.shape)}, the model's is {tuple(want[k].shape)}"
        if torch.as_tensor(v).is_floating_point() != want[k].is_floating_point():
            return f"{k} is {torch.as_tensor(v).dtype}, the model's is {want[k].dtype}"
        if not torch.isfinite(torch.as_tensor(v)).all():
            return f"{k} holds non-finite values"
    return None


def evaluate_assembled(cfg, model_state: dict, data_dir: str | Path, out_dir: str | Path,
                       log=print, epoch: int | None = None) -> tuple[dict[str, str], dict]:
    """Evaluate the assembled federated model on a dataset folder the server may read
    (the config's train and test files under ``data_dir``; in simulation, the
    look-alike's full split): probes, coherence with the cached classifiers where
    the data has a label per sample, reconstruction, and pictures. Returns the paths
    written and the evaluation (with the run folder and the model's ``epoch``, as
    ``mmvm evaluate`` records them); ``log`` gets one line per stage."""
    import dataclasses
    import time

    from mmvm.classifiers import classifiers_for
    from mmvm.data.dataset import MultimodalDataset
    from mmvm.data.label_names import label_names_for
    from mmvm.data.labels import is_labelled
    from mmvm.eval_settings import evaluated_with
    from mmvm.evaluation import evaluate_run
    from mmvm.run_pictures import run_picture

    out = Path(out_dir)
    names = [m.name for m in cfg.model.modalities]
    # what is read below: the probes' training rows, every test row
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, root=str(data_dir), max_train=cfg.eval.probe_train, max_test=0))
    model = build_model(cfg)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in model_state.items()})
    model.eval()
    train_set = MultimodalDataset.from_parquet(cfg.data.files("train"), names,
                                               cfg.data.label, cfg.eval.probe_train)
    test_set = MultimodalDataset.from_parquet(cfg.data.files("test"), names, cfg.data.label)
    is_labelled(cfg, train=train_set, test=test_set)  # raises where half-labelled
    judged = train_set.labels is not None  # coherence: one label a sample
    t0 = time.perf_counter()
    stages = 3 if judged else 2
    if judged:
        log(f"mmvm: evaluation 1/{stages}: judge classifiers for coherence (trained on "
            f"the real data once, then cached)")
    clfs = classifiers_for(cfg) if judged else None
    log(f"mmvm: evaluation {stages - 1}/{stages}: probes, coherence, reconstruction "
        f"({time.perf_counter() - t0:.0f} s so far)")
    ev = evaluate_run(cfg, model, train_set, test_set, clfs)
    ev["run"], ev["epoch"] = str(out), epoch
    # data.max_train above only reads the probes' rows: the evaluation's setting is
    # eval.probe_train over all training rows, as mmvm evaluate's with max_train 0
    ev["settings"] = evaluated_with(dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, max_train=0)), train_set, test_set)
    log(f"mmvm: evaluation {stages}/{stages}: pictures ({time.perf_counter() - t0:.0f} s "
        f"so far)")
    atomic_write(out / "eval.json", json_bytes(ev))
    paths = {"eval": str(out / "eval.json")}
    drawn = run_picture(model, cfg, test_set, out, f"federated {cfg.model.method}",
                        label_names_for(cfg.data.files("test"), cfg.data.label))
    paths.update({k: str(v) for k, v in drawn.items()})
    return paths, ev
