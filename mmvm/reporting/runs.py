"""One run as the report sees it, whatever it was read from.

A :class:`Run` holds the run's identity (method, beta, seed), the settings it is
compared on, its headline numbers and where its pictures are. Numbers come from an
``evaluate_run`` dict (``eval.json``, a row of a benchmark's ``results.json``) or a
flat row (``results.csv``); every key may be missing, and a missing number is simply
absent from :attr:`Run.metrics` (the report says "not evaluated").
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# headline numbers: key -> (label, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "probe": ("latent probe (mean over modalities)", True),
    "probe_all": ("pooled probe (one classifier over all modalities' latents)", True),
    "probe_aggregated": ("latent probe (aggregated latent)", True),
    "chance": ("probe chance (the commonest test label's share)", True),  # the data's
    "coherence": ("coherence (m -> m', m != m')", True),
    "coherence_self": ("self-coherence (m -> m)", True),
    "recon_nll": ("reconstruction NLL (test, per sample, summed over modalities)", False),
    "imputation_nll": ("imputation NLL (each modality from the others, summed)", False),
}

# config keys that differ between seeds or machines without changing the experiment
BOOKKEEPING = {
    "source", "data.folders", "data.streaming", "data.cache_row_groups",
    "data.decoded_dir",
    "train.seed", "train.out_dir", "train.device", "train.num_threads",
    "train.checkpoint_every", "train.compile", "train.amp", "train.channels_last",
    "model.method", "train.beta", "eval.batch_size",
}
# where the data lies: differs between machines holding the same data, so it never
# tells runs apart, and is shown where their data differs (mmvm.reporting.stats)
WHERE_DATA_LIES = "data.root"
# settings of a federated run that shape the experiment (results.json "settings")
FEDERATED_SETTINGS = ("num_sites", "layout", "shards", "missing", "exchange",
                      "exchange_steps", "local_epochs", "delta_tol", "float16", "secure",
                      "cross_eval")


# evaluate_run keys that are settings of the evaluation (they change its numbers)
EVAL_SETTINGS = {"latent_dim": "model.latent_dim", "alpha": "train.alpha",
                 "probe_metric": "eval.metric", "probe_standardized": "eval.probe_standardize",
                 "coherence_sampled": "eval.coherence_sample"}


@dataclass
class Run:
    name: str
    source: str  # the folder, or "file#row"
    kind: str  # "centralized" | "federated" | "results row"
    method: str | None = None
    beta: float | None = None
    seed: int | None = None
    epoch: int | None = None
    settings: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    per_modality: dict[str, dict[str, float]] = field(default_factory=dict)
    # eval.labels' probes: modality -> label column -> eval.metric (None: not scored)
    per_label: dict[str, dict[str, float | None]] = field(default_factory=dict)
    coherence_matrix: tuple[list[str], list[list[float]]] | None = None
    metric_source: str = "not evaluated"
    folder: Path | None = None
    metrics_csv: Path | None = None
    images: dict[str, Path] = field(default_factory=dict)
    checkpoint: Path | None = None
    federated: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)  # the evaluation's own
    # "trained" / "evaluated" -> what did it, where recorded (mmvm.provenance)
    environment: dict[str, dict[str, Any]] = field(default_factory=dict)
    weights: str | None = None  # eval.json's weights_sha256: equal weights, equal digest

    @property
    def label(self) -> str:
        """``method beta=b`` (what the paper's legends say)."""
        beta = "?" if self.beta is None else f"{self.beta:g}"
        return f"{self.method or '?'} beta={beta}"


def number(value: Any) -> float | None:
    """A finite float from a JSON value (a number, or a dict's ``"mean"``), else None."""
    if isinstance(value, Mapping):
        value = value.get("mean")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def integer(value: Any) -> int | None:
    v = number(value)
    return int(v) if v is not None and v == int(v) else None


def text(value: Any) -> str:
    """A setting as a short string (lists and dicts as compact JSON)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"  # 32, 32.0 and "32" (CSV) read alike
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def flatten(config: Mapping, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": "0.001"}`` minus bookkeeping keys."""
    out: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        elif dotted not in BOOKKEEPING:
            out[dotted] = text(value)
    return out


def identity_from_config(run: Run, config: Mapping) -> None:
    """Method, beta, seed and settings from a run's config dict (config.json)."""
    model = config.get("model") if isinstance(config.get("model"), Mapping) else {}
    train = config.get("train") if isinstance(config.get("train"), Mapping) else {}
    run.method = run.method or (str(model["method"]) if "method" in model else None)
    run.beta = run.beta if run.beta is not None else number(train.get("beta"))
    run.seed = run.seed if run.seed is not None else integer(train.get("seed"))
    run.settings.update(flatten(config))


def apply_eval(run: Run, result: Mapping, source: str, path: Path | None = None) -> None:
    """Identity and numbers from an ``evaluate_run`` dict; unknown keys are ignored.
    ``path``: the file it was read from, named where its sections (probe,
    reconstruction, ...) hold no number at all: damaged, not "not evaluated"."""
    if "method" in result:
        run.method = str(result["method"])
    run.beta = number(result.get("beta")) if "beta" in result else run.beta
    run.seed = integer(result.get("seed")) if "seed" in result else run.seed
    run.epoch = integer(result.get("epoch")) or run.epoch
    used = result.get("settings")
    if isinstance(used, Mapping):  # what mmvm evaluate used, over config.json's
        run.settings.update(flatten(used))
    for key, setting in EVAL_SETTINGS.items():
        if key in result and setting not in run.settings:
            run.settings[setting] = text(result[key])
    probe = result.get("probe") if isinstance(result.get("probe"), Mapping) else {}
    recon = result.get("reconstruction")
    recon = recon if isinstance(recon, Mapping) else {}
    coh = result.get("coherence") if isinstance(result.get("coherence"), Mapping) else {}
    imp = result.get("imputation") if isinstance(result.get("imputation"), Mapping) else {}
    imputed = imp.get("rest") if isinstance(imp.get("rest"), Mapping) else {}
    found = {"probe": number(probe.get("mean")), "probe_all": number(probe.get("all")),
             "probe_aggregated": _first(number(result.get("probe_aggregated")),
                                        number(probe.get("aggregated"))),
             "recon_nll": number(recon.get("total")),
             "chance": number((result.get("chance") or {}).get("majority")
                              if isinstance(result.get("chance"), Mapping) else None),
             "coherence": number(coh.get("mean")), "coherence_self": number(coh.get("self")),
             "imputation_nll": number(imp.get("total"))}
    sections = ("probe", "reconstruction", "coherence", "imputation")
    if path is not None and any(k in result for k in sections) and \
            all(v is None for v in found.values()):  # there, and no number in them
        raise ValueError(f"{path}: no number where mmvm evaluate writes one (probe, "
                         f"reconstruction, coherence): a damaged file? Run mmvm evaluate "
                         f"on the run again")
    _set_metrics(run, found, source)
    per_recon = recon.get("per_modality")
    per_recon = per_recon if isinstance(per_recon, Mapping) else {}
    floor = recon.get("baseline") if isinstance(recon.get("baseline"), Mapping) else {}
    for name in dict.fromkeys([*probe, *per_recon]):
        if name in ("mean", "all", "aggregated"):
            continue
        cell = {"probe": number(probe.get(name)), "recon_nll": number(per_recon.get(name)),
                "recon_constant": number(floor.get(name)),
                "imputed_nll": number(imputed.get(name))}
        cell = {k: v for k, v in cell.items() if v is not None}
        if cell:
            run.per_modality[str(name)] = cell
    run.per_label = label_scores(result)
    run.coherence_matrix = coherence_matrix(coh)
    digest = result.get("weights_sha256")
    run.weights = digest if isinstance(digest, str) else run.weights
    for role, key in (("evaluated", "environment"), ("trained", "trained_with")):
        if key in result:  # trained_with null: evaluated apart, trainer not recorded
            env = result[key]
            run.environment[role] = dict(env) if isinstance(env, Mapping) else {}
    said = result.get("warnings")
    run.warnings = [str(w) for w in said if isinstance(w, str)] \
        if isinstance(said, list) else []
    if imputed and "scoring" not in imp:  # eval.json of before 2026-12-05
        run.warnings.append("its imputation NLL was scored the old way (at the mean "
                            "latent, or by a mixture's likelihood), not as runs evaluated "
                            "since: run mmvm evaluate on it again before comparing")


def label_scores(result: Mapping) -> dict[str, dict[str, float | None]]:
    """``probe_labels`` of an ``evaluate_run`` dict as modality -> label -> score (its
    ``metric``; None where that label could not be scored: one class in its rows)."""
    scores = result.get("probe_labels")
    if not isinstance(scores, Mapping) or not isinstance(scores.get("labels"), Mapping):
        return {}
    metric = str(scores.get("metric", ""))
    return {str(m): {str(c): number(v.get(metric)) if isinstance(v, Mapping) else None
                     for c, v in per.items()}
            for m, per in scores["labels"].items() if isinstance(per, Mapping)}


def coherence_matrix(coh: Mapping) -> tuple[list[str], list[list[float]]] | None:
    """``(names, matrix)`` when the coherence section holds a square numeric matrix."""
    names, matrix = coh.get("names"), coh.get("matrix")
    if not isinstance(names, list) or not isinstance(matrix, list) or not names:
        return None
    if len(matrix) != len(names) or any(
            not isinstance(r, list) or len(r) != len(names) for r in matrix):
        return None
    values = [[number(v) for v in r] for r in matrix]
    cleaned = [[math.nan if v is None else v for v in r] for r in values]
    return [str(n) for n in names], cleaned


# flat-row keys (results.csv, benchmark rows) -> metric or setting
ROW_METRICS = {"probe": "probe", "probe_all": "probe_all", "coherence": "coherence",
               "recon_nll": "recon_nll", "coherence_self": "coherence_self",
               "probe_agg": "probe_aggregated", "probe_aggregated": "probe_aggregated",
               "imputation_nll": "imputation_nll"}
ROW_SETTINGS = {"alpha": "train.alpha", "latent_dim": "model.latent_dim",
                "epochs": "train.epochs", "mode": "mode"}


def apply_row(run: Run, row: Mapping, source: str) -> None:
    """Identity and numbers from a flat row: method, beta, seed, recon_nll, probe, ..."""
    if "reconstruction" in row or isinstance(row.get("probe"), Mapping):
        apply_eval(run, row, source)
        return
    run.method = str(row["method"]) if "method" in row else run.method
    run.beta = number(row.get("beta"))
    run.seed = integer(row.get("seed"))
    run.epoch = integer(row.get("epoch"))
    for key, setting in ROW_SETTINGS.items():
        if key in row:
            run.settings[setting] = text(row[key])
    _set_metrics(run, {m: number(row.get(k)) for k, m in ROW_METRICS.items()}, source)
    for key, value in row.items():  # "probe/m0": a modality's probe
        name = str(key).partition("probe/")[2]
        if str(key).startswith("probe/") and number(value) is not None:
            run.per_modality.setdefault(name, {})["probe"] = number(value)


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _set_metrics(run: Run, found: Mapping[str, float | None], source: str) -> None:
    kept = {k: v for k, v in found.items() if v is not None}
    if kept:
        run.metrics.update(kept)
        run.metric_source = source
