"""What sites that drop out cost: the hippocampus federation with 0, 1 and 2 rats away.

Each away rat misses a random 20 % of the windows (a different draw per seed): for
those windows it does not train, its posteriors leave the other rats' mixture prior
and its weights are not updated; it rejoins the next window. The run otherwise is the
fault-free one (same seed, same schedule), through the same sites, endpoints and
round loop as under Flower (in-process transport, :class:`mmvm.federation.local.Outages`).
Each final model is evaluated by the same code as every benchmark: latent probes
(odor), coherence, test reconstruction. Mean and standard error over seeds.

    python benchmarks/faults.py                 # 3 seeds x 3 conditions, ~20 min, 2 cores
    python benchmarks/faults.py --quick         # smoke test, ~1 min
    python benchmarks/faults.py --tuning 0.4 --out benchmarks/results/faults_tuning0.4
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmvm.classifiers import classifiers_for  # noqa: E402
from mmvm.config import load_config  # noqa: E402
from mmvm.data.dataset import MultimodalDataset  # noqa: E402
from mmvm.data.default import ensure_default_sites  # noqa: E402
from mmvm.data.hippocampus_knobs import parse_knobs  # noqa: E402
from mmvm.evaluation import evaluate_run  # noqa: E402
from mmvm.federation.local import run_local  # noqa: E402
from mmvm.federation.plan import PlanArgs  # noqa: E402
from mmvm.federation.settings import settings_for  # noqa: E402
from mmvm.help_format import DefaultsHelp  # noqa: E402
from mmvm.jsonfile import json_bytes  # noqa: E402
from mmvm.model import MultimodalVAE  # noqa: E402
from mmvm.provenance import environment  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=DefaultsHelp)
    p.add_argument("--config", default=str(ROOT / "configs/hippocampus.toml"),
                   help="experiment config")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config override section.key=value (repeatable)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs")
    p.add_argument("--k", type=int, default=8, help="steps per window")
    p.add_argument("--away", type=float, default=0.2, help="fraction of windows missed")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    p.add_argument("--tuning", type=float, default=None,
                   help="log-rate SD of the look-alike's tuned neurons (over "
                        "--hippocampus); default: that of --hippocampus")
    p.add_argument("--hippocampus", default="default", type=parse_knobs,
                   help="hippocampus look-alike (rat configs): default | dense (the "
                        "first look-alike, v1) | knobs, e.g. 'tuning=1.0,noise-sd=0'")
    p.add_argument("--data-dir", default=str(ROOT / "data"), help="data folder, made on first use")
    p.add_argument("--out", default=None,
                   help="results folder (default: benchmarks/results/faults; with --quick, faults-quick)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check it runs")
    args = p.parse_args(argv)
    quick = "-quick" * args.quick  # a smoke run leaves the published results alone
    args.out = args.out or str(ROOT / "benchmarks/results" / f"faults{quick}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.epochs, args.seeds = 2, 1
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(args.config, args.overrides)
    names = [m.name for m in base.model.modalities]
    knobs = args.hippocampus if args.tuning is None else {**args.hippocampus,
                                                           "tuning": args.tuning}
    sites, files = ensure_default_sites(args.data_dir, "vertical", seed=0,
                                        modalities=tuple(names), hippocampus=knobs)
    full = Path(files[sites[0].name]["train"]).parents[2]
    train_set = MultimodalDataset.from_parquet(full / "train.parquet", names)
    test_set = MultimodalDataset.from_parquet(full / "test.parquet", names)
    site_files = {s.name: (files[s.name]["train"], None) for s in sites}
    rows = []
    for seed in range(args.seeds):
        cfg = load_config(args.config, args.overrides + [
            f"train.epochs={args.epochs}", "train.device=cpu", f"data.root={full}",
            f"train.seed={seed}", f"train.out_dir={out / 'central'}"])
        clfs = classifiers_for(cfg)
        settings = settings_for(cfg, exchange="steps", exchange_steps=args.k,
                                collect_model=True, float16=False, min_sites=1)
        windows = len(PlanArgs.from_dict(settings.plan_args().to_dict()).plan(len(train_set)))
        rng = np.random.default_rng(1000 + seed)
        for n_away in (0, 1, 2):
            rats = sorted(rng.choice(len(sites), n_away, replace=False).tolist())
            away = {sites[r].name: set(rng.choice(windows, round(args.away * windows),
                                                  replace=False).tolist()) for r in rats}
            t0 = time.perf_counter()
            res, _ = run_local(settings, site_files, away=away)
            model = MultimodalVAE(cfg.model.modalities, cfg.model.latent_dim)
            model.load_state_dict({n: torch.as_tensor(v) for n, v in res.model_state.items()})
            ev = evaluate_run(cfg, model.eval(), train_set, test_set, clfs)
            rows.append({"seed": seed, "sites_away": n_away, "away": sorted(away),
                         "missed": sum(len(w) for w in res.missed.values()),
                         "windows": windows, "probe": ev["probe"]["mean"],
                         "coherence": ev.get("coherence", {}).get("mean", float("nan")),
                         "recon_nll": ev["reconstruction"]["total"],
                         "seconds": round(time.perf_counter() - t0, 1)})
            print({k: v for k, v in rows[-1].items()}, flush=True)
    table = summarize(rows)
    (out / "results.json").write_bytes(json_bytes({"args": vars(args), "rows": rows,
                                                  "summary": table,
                                                  "environment": environment()}, indent=2))
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(markdown(table, args))
    print(f"\nwritten: {out / 'results.json'}, {out / 'results.csv'}")
    return 0


def _mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return m, se


def summarize(rows: list[dict]) -> list[dict]:
    """Per condition: mean and standard error over seeds, and the paired difference
    to the fault-free run of the same seed."""
    base = {r["seed"]: r for r in rows if r["sites_away"] == 0}
    out = []
    for n in sorted({r["sites_away"] for r in rows}):
        group = [r for r in rows if r["sites_away"] == n]
        entry = {"sites_away": n, "seeds": len(group)}
        for key in ("probe", "coherence", "recon_nll"):
            entry[key] = _mean_se([r[key] for r in group])
            entry[f"d_{key}"] = _mean_se([r[key] - base[r["seed"]][key] for r in group])
        out.append(entry)
    return out


def markdown(table: list[dict], args) -> str:
    def f(ms: tuple[float, float], d: int = 3) -> str:  # one seed: no error bar
        return f"{ms[0]:.{d}f} (1 seed)" if math.isnan(ms[1]) else \
            f"{ms[0]:.{d}f} ± {ms[1]:.{d}f}"

    lines = [f"| rats away ({args.away:.0%} of windows each) | probe | Δ probe | coherence | "
             f"Δ coherence | recon NLL |", "|---|---|---|---|---|---|"]
    for e in table:
        lines.append(f"| {e['sites_away']} | {f(e['probe'])} | {f(e['d_probe'])} | "
                     f"{f(e['coherence'])} | {f(e['d_coherence'])} | "
                     f"{f(e['recon_nll'], 1)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
