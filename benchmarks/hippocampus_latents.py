"""The paper's hippocampus figure on the look-alike, at several odor tuning strengths:
where MMVM's shared space appears and where it does not.

For each tuning strength (log-rate SD of the tuned neurons; the look-alike's other
knobs at their defaults, mmvm.data.hippocampus_knobs) and seed (each seed a new
simulation and a new training seed), trains each method centrally and, for MMVM,
federated (5 sites, one rat each, per-round exchange), on the same data and budget;
then fits two odor probes on the test split's 2-D unimodal posterior means: one over
all rats' latents together ("pooled", high only if the rats share one latent space)
and one per rat (mean over rats). References: how much odor the input itself carries,
per rat, to a logistic regression on the 250 ms window's counts
(mmvm.data.odor_decoding, cross-validated over the rat's trials) and on the raw
sub-windows the encoders see (train/test split as the probes: the per-rat probe's
ceiling).
Mean ± standard error over seeds; results.json/csv, latents.png (2-D latents of the
first seed, one row per tuning, one panel per method) and probes_vs_tuning.png.

    python benchmarks/hippocampus_latents.py --threads 1  # tunings 0.5,1,2 x 3 seeds:
                                                  # 13 min on 2 cores (the README's run)
    python benchmarks/hippocampus_latents.py --tunings 0.3,0.5,1,2   # add a weaker one
    python benchmarks/hippocampus_latents.py --tunings 0.5,1.0 --seeds 0 --epochs 2  # smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mmvm.config import load_config  # noqa: E402
from mmvm.data.dataset import MultimodalDataset  # noqa: E402
from mmvm.data.default import ensure_default_sites  # noqa: E402
from mmvm.data.hippocampus import DEFAULTS, MODALITIES, simulate_sessions  # noqa: E402
from mmvm.data.hippocampus_knobs import resolve_knobs  # noqa: E402
from mmvm.data.odor_decoding import raw_odor_decoding  # noqa: E402
from mmvm.federation.local import run_local  # noqa: E402
from mmvm.federation.settings import settings_for  # noqa: E402
from mmvm.help_format import DefaultsHelp  # noqa: E402
from mmvm.jsonfile import json_bytes  # noqa: E402
from mmvm.method_styles import series_styles  # noqa: E402
from mmvm.model import MultimodalVAE  # noqa: E402
from mmvm.probes import fit_probe  # noqa: E402
from mmvm.provenance import environment  # noqa: E402
from mmvm.reporting.stats import estimate  # noqa: E402
from mmvm.training import train  # noqa: E402

ODORS = ["A", "B", "C", "D"]
RAW = "raw 250 ms counts (per-rat decoder)"
RAW_SUB = "raw sub-windows (per-rat decoder)"
FEDERATED = "mmvm federated (5 sites)"


def parse_args(argv=None):
    floats = lambda s: [float(v) for v in s.split(",") if v.strip()]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=DefaultsHelp)
    p.add_argument("--tunings", type=floats, default=[DEFAULTS["tuning"], 1.0, 2.0],
                   help="log-rate SDs of the tuned neurons, comma-separated (default "
                        f"{DEFAULTS['tuning']:g},1.0,2.0: the default look-alike, "
                        "stronger, strong)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    for knob in ("tuned_fraction", "gain_sd", "noise_sd"):
        p.add_argument(f"--{knob.replace('_', '-')}", type=float, default=DEFAULTS[knob],
                       help=f"look-alike knob (default {DEFAULTS[knob]:g})")
    p.add_argument("--methods", nargs="+", default=["mmvm", "independent", "avg", "poe"],
                   help="centralized methods to train")
    p.add_argument("--epochs", type=int, default=40, help="training epochs")
    p.add_argument("--width", type=int, default=64, help="MLP hidden units per rat")
    p.add_argument("--network", default="mlp", choices=("mlp", "hippocampus_mlp"),
                   help="each rat's encoder and decoder (default: mlp; hippocampus_mlp: "
                        "the hippocampus authors' network exactly, mmvm/networks/mlp.py)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--no-federated", action="store_true",
                   help=f"skip the {FEDERATED!r} row")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--data-dir", default=str(ROOT / "data"), help="data folder, made on first use")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/hippocampus"),
                   help="results folder")
    p.add_argument("--replot", action="store_true",
                   help="redraw probes_vs_tuning.png from OUT/results.json, no training "
                   "(latents.png needs the run's latents: run again)")
    return p.parse_args(argv)


def pooled_means(model: MultimodalVAE, ds: MultimodalDataset):
    """Unimodal posterior means of every rat, stacked: ([N*M, 2], odor, rat)."""
    b = ds.batch(np.arange(len(ds)))
    with torch.no_grad():
        mu, _ = model.encode(b["x"], b["mask"])
    n, m, d = mu.shape
    return (mu.reshape(n * m, d).numpy(), np.repeat(b["label"].numpy(), m),
            np.tile(np.arange(m), n))


def probes(model, train_set, test_set) -> dict:
    xa, ya, ra = pooled_means(model, train_set)
    xb, yb, rb = pooled_means(model, test_set)
    # standardize=False: the paper's protocol, raw latent means
    out = {"pooled": fit_probe(xa, ya, standardize=False).score(xb, yb)}
    per_rat = [fit_probe(xa[ra == r], ya[ra == r], standardize=False)
               .score(xb[rb == r], yb[rb == r]) for r in range(int(ra.max()) + 1)]
    out["per_rat"] = float(np.mean(per_rat))
    return out


def subwindow_decoding(train_set: MultimodalDataset, test_set: MultimodalDataset
                       ) -> float:
    """Mean over rats of a logistic regression of the odor on the rat's raw input (the
    [neurons, 10] sub-window the encoder sees; log1p, standardized, C = 0.01), trained
    on the train split, scored on the test split: the per-rat probe's ceiling."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a, b = train_set.batch(np.arange(len(train_set))), test_set.batch(np.arange(len(test_set)))
    accs = []
    for k in a["x"]:
        xa = np.log1p(a["x"][k].reshape(len(train_set), -1).numpy())
        xb = np.log1p(b["x"][k].reshape(len(test_set), -1).numpy())
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=5000))
        accs.append(model.fit(xa, a["label"].numpy()).score(xb, b["label"].numpy()))
    return float(np.mean(accs))


def run_condition(args, tuning: float, seed: int, out: Path):
    """Rows and test latents (first-seed figure) of one tuning strength and seed."""
    knobs = resolve_knobs({"tuning": tuning, "tuned_fraction": args.tuned_fraction,
                           "gain_sd": args.gain_sd, "noise_sd": args.noise_sd})
    rats = list(MODALITIES)
    sites, files = ensure_default_sites(args.data_dir, "vertical", seed=seed,
                                        modalities=tuple(rats), hippocampus=knobs)
    full = Path(files[sites[0].name]["train"]).parents[2]
    train_set = MultimodalDataset.from_parquet(full / "train.parquet", rats)
    test_set = MultimodalDataset.from_parquet(full / "test.parquet", rats)
    base = {"tuning": tuning, "seed": seed}
    raw = raw_odor_decoding(simulate_sessions(seed, **knobs), seed=seed)
    rows = [{**base, "run": RAW, "pooled": None, "per_rat": float(np.mean(raw)),
             "seconds": None},
            {**base, "run": RAW_SUB, "pooled": None,
             "per_rat": subwindow_decoding(train_set, test_set), "seconds": None}]
    tag = out / f"tuning{tuning:g}-seed{seed}"

    def config(method):
        return load_config(ROOT / "configs/hippocampus.toml", [
            f"model.method={method}", f"train.epochs={args.epochs}", f"train.lr={args.lr}",
            f"train.seed={seed}", "train.device=cpu", f"train.out_dir={tag / method}",
            "train.checkpoint_every=1000", f"data.root={full}",
            *[f"model.modalities.{r}.{k}={v}" for r in rats
              for k, v in (("width", args.width), ("network", f'"{args.network}"'))]])

    mus = {}
    for method in args.methods:
        t0 = time.perf_counter()
        model = train(config(method), train_set, resume=False, show_progress=False).model
        rows.append({**base, "run": method, **probes(model, train_set, test_set),
                     "seconds": round(time.perf_counter() - t0, 1)})
        mus[method] = pooled_means(model, test_set)[:2]
        print(rows[-1], flush=True)
    if not args.no_federated:
        cfg = config("mmvm")
        t0 = time.perf_counter()
        settings = settings_for(cfg, exchange="round", local_epochs=1, float16=True,
                                collect_model=True, delta_tol=-1.0)
        res, _ = run_local(settings, {s.name: (files[s.name]["train"], None) for s in sites})
        model = MultimodalVAE(cfg.model.modalities, 2)
        model.load_state_dict({k: torch.as_tensor(v) for k, v in res.model_state.items()})
        rows.append({**base, "run": FEDERATED, **probes(model, train_set, test_set),
                     "seconds": round(time.perf_counter() - t0, 1),
                     "bytes": res.bytes_total})
        mus[FEDERATED] = pooled_means(model, test_set)[:2]
        print(rows[-1], flush=True)
    return rows, mus


def summarize(rows: list[dict]) -> list[dict]:
    """Per (tuning, run): mean ± SE over seeds of both probes and the seconds."""
    out = []
    for t in dict.fromkeys(r["tuning"] for r in rows):
        for run in dict.fromkeys(r["run"] for r in rows):
            mine = [r for r in rows if r["tuning"] == t and r["run"] == run]
            if mine:
                out.append({"tuning": t, "run": run, "seeds": len(mine),
                            **{k: (lambda e: None if e is None else vars(e))(
                                estimate(r[k] for r in mine if r[k] is not None))
                               for k in ("pooled", "per_rat", "seconds")}})
    return out


def _cell(e: dict | None) -> str:
    if e is None:
        return "-"
    return f"{e['mean']:.3f}" + ("" if e["se"] is None else f" ± {e['se']:.3f}")


def figures(summary: list[dict], mus: dict, out: Path) -> list[Path]:
    """latents.png (rows: tunings, panels: runs) and probes_vs_tuning.png."""
    tunings = list(mus)
    runs = list(mus[tunings[0]])
    fig, axes = plt.subplots(len(tunings), len(runs), squeeze=False,
                             figsize=(3.0 * len(runs), 2.8 * len(tunings)))
    cmap = plt.get_cmap("tab10")
    for i, t in enumerate(tunings):
        for j, run in enumerate(runs):
            ax = axes[i][j]
            mu, lab = mus[t][run]
            for c in np.unique(lab):
                sel = lab == c
                ax.scatter(mu[sel, 0], mu[sel, 1], s=3, alpha=0.5, color=cmap(int(c)),
                           label=ODORS[int(c)])
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{run}" if i == 0 else "", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"tuning {t:g}", fontsize=9)
    axes[0][-1].legend(fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1, .5))
    fig.tight_layout()
    paths = [out / "latents.png", out / "probes_vs_tuning.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    plot_probes(summary, paths[1])
    return paths


def plot_probes(summary: list[dict], path: Path) -> Path:
    """probes_vs_tuning.png: both probes against tuning; one style per run in both
    panels, a method's colour as in every figure (the raw decoders, dashed, only
    have a per-rat value); bars: standard error over the seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    names = list(dict.fromkeys(s["run"] for s in summary))
    styles = series_styles(names)
    lo, hi = min(s["seeds"] for s in summary), max(s["seeds"] for s in summary)
    bars = "1 seed: no error bars" if hi == 1 else \
        f"bars: ± standard error over {lo if lo == hi else f'{lo}-{hi}'} seeds"
    for ax, key, title in zip(axes, ("pooled", "per_rat"),
                              ("pooled odor probe (all rats)", "per-rat probe (mean)"),
                              strict=True):
        for run in names:
            pts = [(s["tuning"], s[key]) for s in summary if s["run"] == run and s[key]]
            if pts:
                colour, line, marker = styles[run]
                ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts],
                            yerr=[p[1]["se"] or 0 for p in pts], marker=marker,
                            capsize=3, label=run, color=colour,
                            linestyle="--" if run in (RAW, RAW_SUB) else line)
        ax.axhline(0.25, color="grey", lw=0.8, ls=":", label="chance (0.25)")
        ax.set_xlabel("tuning (log-rate SD of tuned neurons)")
        ax.set_title(f"{title}\n({bars})", fontsize=9)
    axes[0].set_ylabel("test accuracy")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.replot:
        summary = json.loads((out / "results.json").read_text())["summary"]
        print(f"wrote {plot_probes(summary, out / 'probes_vs_tuning.png')}")
        return 0
    torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    rows, mus = [], {}
    for tuning in args.tunings:
        for seed in args.seeds:
            r, m = run_condition(args, tuning, seed, out)
            rows += r
            if seed == args.seeds[0]:
                mus[tuning] = m
    summary = summarize(rows)
    knobs = {t: resolve_knobs({"tuning": t, "tuned_fraction": args.tuned_fraction,
                               "gain_sd": args.gain_sd, "noise_sd": args.noise_sd})
             for t in args.tunings}
    (out / "results.json").write_bytes(json_bytes(
        {"args": vars(args), "environment": environment(), "knobs": knobs, "rows": rows,
         "summary": summary}, indent=1))
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["tuning", "seed", "run", "pooled", "per_rat",
                                           "seconds", "bytes"])
        w.writeheader()
        w.writerows(rows)
    paths = figures(summary, mus, out)
    print(f"\nOdor probes on 2-D latents (test split; chance 0.25), mean ± SE over "
          f"{len(args.seeds)} seed(s), {args.epochs} epochs:\n")
    print("| tuning | run | pooled odor probe (all rats) | per-rat probe (mean) | s |")
    print("|---|---|---|---|---|")
    for s in summary:
        secs = "-" if s["seconds"] is None else f"{s['seconds']['mean']:.0f}"
        print(f"| {s['tuning']:g} | {s['run']} | {_cell(s['pooled'])} | "
              f"{_cell(s['per_rat'])} | {secs} |")
    print(f"\nwritten: {out / 'results.json'}, {out / 'results.csv'}, "
          f"{', '.join(map(str, paths))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
