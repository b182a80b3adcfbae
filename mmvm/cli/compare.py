"""``mmvm compare``: MMVM against the baselines on your own experiment, over seeds.

Each method and seed is an ``mmvm train`` of the config (its own ``--set`` plus
``model.method``, ``train.seed`` and ``train.out_dir = OUT/<method>-seed<s>``) and an
``mmvm evaluate`` of that run: the same networks, data and budget for every method.
A finished run is reused (training resumes from its checkpoint, an evaluation newer
than it is kept), so an interrupted comparison continues where it stopped. The end
is one table, mean ± standard error over seeds (``OUT/summary.md``, ``summary.csv``),
the warnings of every run (a seed whose latents came out swapped shows there, not in
a mean), and ``mmvm report OUT/*-seed*`` for the page with the figures.

MMVAE+ needs a modality-specific latent: without ``model.private_dim`` in the config
it gets one as large as ``model.latent_dim`` (as ``benchmarks/compare_methods.py``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path

from mmvm.cli import MAIN_JOB_CONFIG, add_config_arguments
from mmvm.method_names import TABLE_ORDER

METHODS = list(TABLE_ORDER)
# eval.json -> the table's columns (label, where in the result, higher is better)
COLUMNS = {"probe": ("probe", ("probe", "mean")),
           "pooled": ("pooled probe", ("probe", "all")),
           # the joint methods' own latent (AVG, PoE, ... ; MMVM's mixture)
           "aggregated": ("aggregated probe", ("probe_aggregated", "mean")),
           "coherence": ("coherence", ("coherence", "mean")),
           "recon_nll": ("recon NLL", ("reconstruction", "total")),
           "imputed_nll": ("imputed NLL", ("imputation", "total"))}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="train and evaluate several methods and seeds on one config",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, MAIN_JOB_CONFIG)
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS,
                   help="methods to compare (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="training seeds (default: 0 1 2)")
    p.add_argument("--out", default="runs/compare", help="folder of the runs and the "
                   "summary (default: runs/compare)")
    p.add_argument("--no-coherence", action="store_true",
                   help="evaluate without coherence (no judge classifiers)")
    p.add_argument("--imputation-draws", type=int, default=1, metavar="S",
                   help="imputation by its predictive log-likelihood over S draws "
                        "(mmvm evaluate's option; default 1: one draw's expected score)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmvm.cli import main
    from mmvm.config import load_config

    base = load_config(args.config, args.overrides)  # a typo fails before any training
    out = Path(args.out)
    # evaluate reads data.* and eval.* from the command line; the model is the run's
    evaluating = [a for s in args.overrides if s.split("=", 1)[0].strip().startswith(
        ("data.", "eval.")) for a in ("--set", s)]
    runs, failed, code = [], [], 0
    for seed, method in ((s, m) for s in args.seeds for m in args.methods):
        if code == 130:  # Ctrl-C in a run: stop; what finished is summed up
            break
        run_dir = out / f"{method}-seed{seed}"
        print(f"mmvm compare: {method}, seed {seed} -> {run_dir}", flush=True)
        flags = [a for s in _sets(args.overrides, base, method, seed, run_dir)
                 for a in ("--set", s)]
        code = main(["train", "--config", args.config, *flags, "--no-progress"])
        if not code and _stale(run_dir, base, not args.no_coherence,
                               args.imputation_draws):
            code = main(["evaluate", "--run", str(run_dir), "--config", args.config,
                         *evaluating, "--no-progress",
                         "--imputation-draws", str(args.imputation_draws)]
                        + ["--no-coherence"] * args.no_coherence)
        if code:  # said on stderr; the others still run and are summed up
            failed.append(f"{method} seed {seed}: " + ("interrupted" if code == 130
                          else f"failed (exit {code}; its output above)"))
            continue
        runs.append((method, seed, json.loads((run_dir / "eval.json").read_text())))
    if runs:
        print(write_summary(runs, out, failed))
        print(f"wrote {out / 'summary.md'}, {out / 'summary.csv'}; the page with the "
              f"figures: mmvm report {out}/*-seed* --out {out / 'report.html'}")
    for line in failed:
        print(f"mmvm compare: {line}")
    return 130 if code == 130 else 1 if failed else 0


def _sets(overrides: list[str], base, method: str, seed: int, run_dir: Path) -> list[str]:
    """The run's ``--set``s: the user's, then method, seed and folder; MMVAE+ gets a
    private latent (the config's, else one as large as the shared), every other
    method none (the config's check allows private_dim only for MMVAE+)."""
    private = (base.model.private_dim or base.model.latent_dim) if method == "mmvaeplus" \
        else 0
    return [*overrides, f'model.method="{method}"', f"train.seed={seed}",
            f"train.out_dir={json.dumps(str(run_dir))}", f"model.private_dim={private}"]


def _stale(run_dir: Path, base, coherence: bool, draws: int = 1) -> bool:
    """No evaluation of the run's last checkpoint with these eval settings and data
    keys yet (an eval.json of another test file or ``max_test`` would be averaged
    with the others), one whose imputation was scored otherwise (``draws``: the
    predictive reading's), or one without the coherence now asked for."""
    import dataclasses

    from mmvm.eval_settings import EVAL_DATA_KEYS
    from mmvm.imputation import scoring

    ev, ckpt = run_dir / "eval.json", run_dir / "checkpoint.pt"
    if not ev.is_file() or ev.stat().st_mtime < ckpt.stat().st_mtime:
        return True
    result = json.loads(ev.read_text())
    data = dataclasses.asdict(base.data)
    wanted = json.loads(json.dumps({"eval": dataclasses.asdict(base.eval),
                                    "data": {k: data[k] for k in EVAL_DATA_KEYS}}))
    settings = result.get("settings", {})
    scored = (result.get("imputation") or {}).get("scoring")
    return any(settings.get(k) != v for k, v in wanted.items()) or \
        scored != scoring(True, draws) or \
        (coherence and "coherence" not in result and "chance" in result)  # labelled


def _value(result: dict, path: tuple[str, str]) -> float:
    section = result.get(path[0])
    value = section.get(path[1]) if isinstance(section, dict) else None
    return float(value) if isinstance(value, (int, float)) else math.nan


def summarize(runs: list[tuple[str, int, dict]]) -> list[dict]:
    """Per method, in order: seeds, mean and standard error of every column, and the
    evaluations' warnings by seed."""
    from mmvm.reporting.stats import estimate

    rows = []
    for method in dict.fromkeys(m for m, _, _ in runs):
        mine = [(s, r) for m, s, r in runs if m == method]
        row: dict = {"method": method, "seeds": len(mine)}
        for key, (_, path) in COLUMNS.items():
            est = estimate(_value(r, path) for _, r in mine)
            row[key] = est.mean if est else math.nan
            row[key + "_se"] = est.se if est and est.se is not None else math.nan
            row[key + "_n"] = est.n if est else 0
        row["warnings"] = [(f"{method} seed {s}", w) for s, r in mine
                           for w in r.get("warnings", [])]
        rows.append(row)
    return rows


def write_summary(runs: list[tuple[str, int, dict]], out: Path,
                  failed: list[str] = ()) -> str:
    """``summary.md`` and ``summary.csv`` in ``out``; returns the Markdown."""
    from mmvm.atomic import atomic_write

    rows = summarize(runs)
    chance = next((r["chance"]["majority"] for _, _, r in runs
                   if isinstance(r.get("chance"), dict)), None)
    head = ["method", "seeds", *(label for label, _ in COLUMNS.values())]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [_cell(r[k], r[k + "_se"], 1 if "nll" in k else 3)
                 + (f" (n={r[k + '_n']})" if 0 < r[k + "_n"] < r["seeds"] else "")
                 for k in COLUMNS]
        lines.append(f"| {r['method']} | {r['seeds']} | " + " | ".join(cells) + " |")
    scored = next(((r.get("imputation") or {}).get("scoring") for _, _, r in runs
                   if (r.get("imputation") or {}).get("scoring")), None)
    notes = [f"Mean ± standard error over seeds; chance (the commonest test label's "
             f"share) {chance:.3f}." if chance is not None else "Mean ± standard error "
             "over seeds.", "NLLs per sample, summed over the modalities (imputed: each "
             "one decoded from the others" + (f"; {scored}" if scored else "") +
             "): lower is better; probes and coherence: higher."]
    from mmvm.reporting.warning_kinds import warning_kinds

    warned = [f"- {line}" for line in failed] + [
        f"- {line}" for line in warning_kinds([x for r in rows for x in r["warnings"]])]
    md = "\n".join(lines + [""] + notes + (["", "Warnings:"] + warned if warned else []))
    atomic_write(out / "summary.md", (md + "\n").encode())
    buf = io.StringIO()
    fields = ["method", "seeds"] + [k + s for k in COLUMNS for s in ("", "_se")]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "summary.csv", buf.getvalue().encode())
    return md


def _cell(mean: float, se: float, digits: int) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(se) else f" ± {se:.{digits}f}")
