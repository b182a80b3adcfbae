"""MMVM against independent VAEs at the main job's budget, over several seeds.

The README's main job (``flwr run .``) trains MMVM federated on the simulation's
default data with the app's run config. This benchmark trains the same experiment
config centrally (federated training with exchange every step is the same
computation; per-round exchange is an approximation of it) for MMVM and for
independent VAEs, at the same epochs, for several seeds, and reports the latent
probes: the mean over modalities of a per-modality logistic regression on the
unimodal means ("probe"), and one classifier over every modality's latents together
("pooled", the paper's hippocampus protocol: high only if the modalities share one
latent space). Mean and standard error over seeds, and the paired per-seed
difference of each method to the first (mmvm) with its standard error; JSON and CSV
next to the table.

    python benchmarks/main_job_methods.py                  # 3 seeds x 2 methods
    python benchmarks/main_job_methods.py --seeds 0 1 2 3 4 --methods mmvm independent
"""

from __future__ import annotations

import argparse
import csv
import sys
import tomllib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmvm.config import load_config  # noqa: E402
from mmvm.data import open_dataset  # noqa: E402
from mmvm.data.default import ensure_default_sites  # noqa: E402
from mmvm.evaluation import encode_dataset, present_labels, probe_accuracy  # noqa: E402
from mmvm.help_format import DefaultsHelp  # noqa: E402
from mmvm.jsonfile import json_bytes  # noqa: E402
from mmvm.provenance import environment  # noqa: E402
from mmvm.reporting.stats import estimate  # noqa: E402
from mmvm.training import train  # noqa: E402


def app_config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["tool"]["flwr"]["app"]["config"]


def run(method: str, seed: int, args, data: Path) -> dict:
    rc = app_config()
    sets = [s for s in rc["set"].split(";") if s.strip()] + [
        f"model.method={method}", f"train.seed={seed}", "train.device=cpu",
        f"train.num_threads={args.threads}", f"data.root={data}",
        f"train.out_dir={args.out}/runs/{method}-seed{seed}"] + args.set
    cfg = load_config(ROOT / rc["config"], sets)
    names = [m.name for m in cfg.model.modalities]
    tr = open_dataset(data / "train.parquet", names, cfg.data)
    te = open_dataset(data / "test.parquet", names, cfg.data)
    # a finished run in its out_dir is reused (re-scored only): train() resumes it
    trained = train(cfg, tr, resume=True, show_progress=False)
    model = trained.model
    seconds = sum(h["seconds"] for h in trained.history)
    acc = probe_accuracy(encode_dataset(model, tr), present_labels(tr, names),
                         encode_dataset(model, te), present_labels(te, names))
    return {"method": method, "seed": seed, "epochs": cfg.train.epochs,
            "beta": cfg.train.beta, "probe": acc["mean"], "pooled": acc["all"],
            **{f"probe/{n}": acc[n] for n in names}, "train_s": round(seconds, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelp)
    p.add_argument("--methods", nargs="+", default=["mmvm", "independent"],
                   help="methods to train at the main job's budget")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--set", action="append", default=[],
                   help="extra config override section.key=value (repeatable)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/main_job_methods"),
                   help="results folder")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rc = app_config()
    sites, files = ensure_default_sites(Path(rc["data-dir"]).expanduser(), "vertical",
                                        n_train=rc["n-train"], n_test=rc["n-test"],
                                        variant=rc["data-variant"])
    data = Path(files[sites[0].name]["train"]).parents[2]
    rows = []
    for seed in args.seeds:
        for method in args.methods:
            rows.append(run(method, seed, args, data))
            print(rows[-1], flush=True)
    summary = {}
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {k: mean_se([r[k] for r in mine])
                           for k in ("probe", "pooled", "train_s")}
    first = args.methods[0]
    paired = {}
    for method in args.methods[1:]:
        by_seed = {r["seed"]: r for r in rows if r["method"] == method}
        ref = {r["seed"]: r for r in rows if r["method"] == first}
        paired[f"{first} - {method}"] = {
            k: mean_se([ref[s][k] - by_seed[s][k] for s in args.seeds])
            for k in ("probe", "pooled")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_bytes(json_bytes(
        {"data": str(data), "app_config": rc, "extra": args.set,
         "environment": environment(), "rows": rows,
         "summary": summary, "paired": paired}, indent=2))
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\n{len(args.seeds)} seeds, data {data.name}\n")
    print("| method | probe (mean over modalities) | pooled probe | train s |")
    print("|---|---|---|---|")
    def pm(ms, sign=""):  # one seed: no error bar to show
        value = f"{ms[0]:{sign}.3f}"
        return value if len(args.seeds) < 2 else f"{value} ± {ms[1]:.3f}"

    for method, s in summary.items():
        print(f"| {method} | {pm(s['probe'])} | {pm(s['pooled'])} | "
              f"{s['train_s'][0]:.0f} |")
    for name, d in paired.items():
        print(f"| {name} (paired) | {pm(d['probe'], '+')} | {pm(d['pooled'], '+')} | |")
    return 0


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value), as `mmvm report`."""
    est = estimate(values)
    return est.mean, est.se or 0.0


if __name__ == "__main__":
    raise SystemExit(main())
