"""Centralized MMVM vs federated MMVM at several exchange periods.

For each training seed (``--seeds``, default 0 1 2) every run starts from that seed
(same initial weights, same batch schedule); the table gives mean ± standard error
over seeds and the paired per-seed difference to the centralized run. The
federated runs use the in-process transport, which moves exactly the bytes the Flower
apps move (Arrow posterior tables, optionally float16, and shared weights); wall time
therefore excludes Flower's messaging overhead (`--flower` times exact runs under `flwr run`).
Each final model is evaluated by the same code: latent probes, coherence with the
cached digit classifiers, test reconstruction NLL.

    python benchmarks/federated_vs_centralized.py            # ~25 min on 2 CPU cores
    python benchmarks/federated_vs_centralized.py --quick    # smoke test, ~2 min

Under Flower (``flwr run`` simulation and a local deployment, exact windows, wall
time per window split into Flower messaging, serialization, site compute and disk;
``--flower --help`` lists its options, benchmarks/flower_runs.py has the rows):

    python benchmarks/federated_vs_centralized.py --flower --config configs/hippocampus.toml
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

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
from mmvm.federation.settings import settings_for  # noqa: E402
from mmvm.help_format import DefaultsHelp  # noqa: E402
from mmvm.jsonfile import json_bytes  # noqa: E402
from mmvm.model import MultimodalVAE  # noqa: E402
from mmvm.provenance import environment  # noqa: E402
from mmvm.training import train  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=DefaultsHelp)
    p.add_argument("--config", default=str(ROOT / "configs/polymnist.toml"),
                   help="experiment config")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config override section.key=value (repeatable)")
    p.add_argument("--n-train", type=int, default=3000, help="training samples")
    p.add_argument("--n-test", type=int, default=1000, help="test samples")
    p.add_argument("--epochs", type=int, default=10, help="training epochs")
    p.add_argument("--k", type=int, default=8, help="steps per window in 'steps' mode")
    p.add_argument("--local-epochs", type=int, default=5,
                   help="epochs per window in the cheapest ('round') mode")
    p.add_argument("--delta-tol", type=float, default=0.5,
                   help="tolerance of the event-triggered mode (latent units)")
    p.add_argument("--delta-tol-std", type=float, default=0.5,
                   help="tolerance of the int8 event-triggered modes (posterior stds)")
    p.add_argument("--modes", nargs="+", type=int, default=None,
                   help="indices into MODES to run (default: all; centralized always "
                        "runs, and mode 0, exact, is what 'bytes cut' divides)")
    p.add_argument("--hippocampus", default="default", type=parse_knobs,
                   help="hippocampus look-alike (rat configs): default | dense (the "
                        "first look-alike, v1) | knobs, e.g. 'tuning=1.0,noise-sd=0'")
    p.add_argument("--data-dir", default=str(ROOT / "data"), help="data folder, made on first use")
    p.add_argument("--out", default=None,
                   help="results folder (default: benchmarks/results/federated_vs_centralized; with --quick, federated_vs_centralized-quick)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="training seeds (default: %(default)s); the data is fixed")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check it runs")
    p.add_argument("--flower", action="store_true",
                   help="time exact runs under flwr run instead (benchmarks/flower_runs.py;"
                        " its own options follow)")
    args = p.parse_args(argv)
    quick = "-quick" * args.quick  # a smoke run leaves the published results alone
    args.out = args.out or str(ROOT / "benchmarks/results" / f"federated_vs_centralized{quick}")
    return args


MODES = [  # name, exchange, k, local_epochs, float16, warmup, event-triggered[, settings]
    ("federated: every step", "step", 1, 1, False, False, False),
    ("federated: every k steps", "steps", None, 1, False, False, False),
    ("federated: per round, 1 epoch, fp16", "round", 1, 1, True, False, False),
    ("federated: per round, E epochs, fp16", "round", 1, None, True, False, False),
    ("federated: per round, 1,2,4..E epochs, fp16", "round", 1, None, True, True, False),
    ("federated: per round, 1 epoch, fp16, rows moved > TOL", "round", 1, 1, True, False,
     True),
    # int8 (power-of-two scale per column), rows implied by the window (no row column);
    # event-triggered: tolerance in posterior stds, int8 increments with error feedback
    ("federated: every step, int8", "step", 1, 1, False, False, False, {"quantize": "int8"}),
    ("federated: per round, 1 epoch, int8", "round", 1, 1, False, False, False,
     {"quantize": "int8"}),
    ("federated: per round, 1 epoch, int8, rows moved > TOLσ", "round", 1, 1, False, False,
     True, {"quantize": "int8", "delta_unit": "std"}),
    ("federated: per round, 1,2,4..E epochs, int8", "round", 1, None, False, True, False,
     {"quantize": "int8"}),
    ("federated: per round, 1,2,4..E epochs, int8, rows moved > TOLσ", "round", 1, None,
     False, True, True, {"quantize": "int8", "delta_unit": "std"}),
]
PHYSICAL = "N x M x d x 2 float32 numbers (4 bytes) per epoch"  # bytes_vs_limit's unit


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--flower" in argv:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import flower_runs

        return flower_runs.main([a for a in argv if a != "--flower"])
    args = parse_args(argv)
    if args.quick:
        args.n_train, args.n_test, args.epochs, args.local_epochs, args.k = 256, 128, 2, 2, 2
        args.overrides += ["model.latent_dim=8"] + [
            f"model.modalities.m{i}.width=4" for i in range(3)]
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(args.config, args.overrides + [f"train.epochs={args.epochs}",
                                                      "train.device=cpu"])
    names = [m.name for m in base.model.modalities]
    sites, files = ensure_default_sites(args.data_dir, "vertical", n_train=args.n_train,
                                        n_test=args.n_test, seed=base.train.seed,
                                        modalities=tuple(names),
                                        hippocampus=args.hippocampus)
    full = Path(files[sites[0].name]["train"]).parents[2]
    cfg = load_config(args.config, args.overrides + [
        f"train.epochs={args.epochs}", "train.device=cpu", f"data.root={full}",
        f"train.out_dir={out / 'central'}"])
    train_set = MultimodalDataset.from_parquet(full / "train.parquet", names)
    test_set = MultimodalDataset.from_parquet(full / "test.parquet", names)
    print(f"data: {len(train_set)} train / {len(test_set)} test at {full}", flush=True)
    clfs = classifiers_for(cfg)
    rows = []
    for seed in args.seeds:
        rows += run_seed(args, cfg, seed, sites, files, train_set, test_set, clfs)
    exact = {r["seed"]: r["bytes"] for r in rows if r["mode"].endswith("every step")}
    limit = len(train_set) * len(names) * cfg.model.latent_dim * 2 * 4 * args.epochs
    for r in rows:
        r["bytes_vs_exact"] = round(exact[r["seed"]] / r["bytes"], 1) if r["bytes"] else None
        r["bytes_vs_limit"] = round(r["bytes"] / limit, 3) if r["bytes"] else None
    print(f"physical limit: {PHYSICAL}: {len(train_set)} x {len(names)} x "
          f"{cfg.model.latent_dim} x 2 x 4 B x {args.epochs} epochs = {limit / 1e6:.2f} MB")
    summary = summarize(rows)
    _write(out, rows, summary, vars(args))
    print(_markdown(summary, len(args.seeds)))
    print(f"\nwritten: {out / 'results.json'}, {out / 'results.csv'}")
    return 0


def run_seed(args, cfg0, seed, sites, files, train_set, test_set, clfs) -> list[dict]:
    """Centralized and every federated mode at one training seed."""
    import dataclasses

    out = Path(args.out)
    cfg = dataclasses.replace(cfg0, train=dataclasses.replace(
        cfg0.train, seed=seed, out_dir=str(out / f"central-seed{seed}")))
    t0 = time.perf_counter()
    model = train(cfg, train_set, resume=False, show_progress=True).model
    rows = [_row("centralized", cfg, model, train_set, test_set, clfs,
                 time.perf_counter() - t0, 0)]
    print(seed, rows[-1]["mode"], rows[-1]["probe"], flush=True)
    for i, (name, exchange, k, local_epochs, f16, warmup, event, *extra) in enumerate(MODES):
        if args.modes is not None and i not in args.modes and i != 0:
            continue
        extra = extra[0] if extra else {}
        tol = args.delta_tol_std if extra.get("delta_unit") == "std" else args.delta_tol
        k = k or args.k
        local_epochs = local_epochs or args.local_epochs
        label = name.replace("k steps", f"{k} steps").replace("E epochs",
                                                               f"{local_epochs} epochs")
        label = label.replace("..E", f"..{local_epochs}").replace("TOL", f"{tol:g}")
        t0 = time.perf_counter()
        settings = settings_for(cfg, exchange=exchange, exchange_steps=k,
                                local_epochs=local_epochs, float16=f16,
                                exchange_warmup=warmup, collect_model=True,
                                delta_tol=tol if event else -1.0, **extra)
        res, _ = run_local(settings, {s.name: (files[s.name]["train"], None) for s in sites})
        seconds = time.perf_counter() - t0
        fed = MultimodalVAE(cfg.model.modalities, cfg.model.latent_dim)
        fed.load_state_dict({n: torch.as_tensor(v) for n, v in res.model_state.items()})
        rows.append(_row(label, cfg, fed.eval(), train_set, test_set, clfs, seconds,
                         res.bytes_total, windows=len(res.history)))
        print(seed, rows[-1]["mode"], rows[-1]["probe"], flush=True)
    for r in rows:
        r["seed"] = seed
        r["d_probe"] = r["probe"] - rows[0]["probe"]
        r["d_coherence"] = r["coherence"] - rows[0]["coherence"]
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean ± standard error over seeds per mode (order of first appearance)."""
    from mmvm.reporting.stats import estimate

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    out = []
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode]
        row = {"mode": mode, "seeds": len(mine)}
        for k in ("probe", "coherence", "recon_nll", "d_probe", "d_coherence", "seconds",
                  "bytes", "bytes_vs_exact", "bytes_vs_limit"):
            est = estimate(r[k] for r in mine if r[k] is not None)
            row[k] = est.mean if est else None
            row[k + "_se"] = (est.se or 0.0) if est else None
        out.append(row)
    return out


def _row(mode, cfg, model, train_set, test_set, clfs, seconds, nbytes, windows=0) -> dict:
    ev = evaluate_run(cfg, model, train_set, test_set, clfs)
    return {"mode": mode, "probe": round(ev["probe"]["mean"], 4),
            "coherence": round(ev.get("coherence", {}).get("mean", float("nan")), 4),
            "recon_nll": round(ev["reconstruction"]["total"], 2),
            "seconds": round(seconds, 1), "bytes": int(nbytes), "windows": windows,
            "detail": ev}


def _write(out: Path, rows: list[dict], summary: list[dict], args: dict) -> None:
    (out / "results.json").write_bytes(json_bytes(
        {"args": args, "environment": environment(), "rows": rows, "summary": summary},
        indent=2))
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    fields = ["mode", "seed", "probe", "coherence", "recon_nll", "seconds", "bytes",
              "bytes_vs_exact", "bytes_vs_limit", "windows"]
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _markdown(summary: list[dict], seeds: int) -> str:
    def pm(r, k, d=3, sign=""):  # one seed: no error bar to show
        value = f"{r[k]:{sign}.{d}f}"
        return value if r["seeds"] < 2 else f"{value} ± {r[k + '_se']:.{d}f}"

    lines = [f"mean ± standard error over {seeds} seed(s); Δ = paired difference to "
             f"centralized; x physical limit = bytes / ({PHYSICAL} x epochs)", "",
             "| mode | probe acc | Δ probe | coherence | Δ coherence | recon NLL | wall s "
             "| MB exchanged | bytes cut vs exact | x physical limit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        cut = f"{r['bytes_vs_exact']:.1f}x" if r["bytes_vs_exact"] else "-"
        phys = f"{r['bytes_vs_limit']:.2f}" if r["bytes_vs_limit"] else "-"
        central = r["mode"] == "centralized"
        lines.append(f"| {r['mode']} | {pm(r, 'probe')} | "
                     f"{'—' if central else pm(r, 'd_probe', sign='+')} | "
                     f"{pm(r, 'coherence')} | "
                     f"{'—' if central else pm(r, 'd_coherence', sign='+')} | "
                     f"{pm(r, 'recon_nll', 1)} | {r['seconds']:.0f} | "
                     f"{r['bytes'] / 1e6:.1f} | {cut} | {phys} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
