"""Centralized MMVM vs federated MMVM at several exchange periods.

Every run starts from the same seed (same initial weights, same batch schedule). The
federated runs use the in-process transport, which moves exactly the bytes the Flower
apps move (Arrow posterior tables, optionally float16, and shared weights); wall time
therefore excludes Flower's messaging overhead (see the README for a `flwr run` timing).
Each final model is evaluated by the same code: latent probes, coherence with the
cached digit classifiers, test reconstruction NLL.

    python benchmarks/federated_vs_centralized.py            # ~25 min on 2 CPU cores
    python benchmarks/federated_vs_centralized.py --quick    # smoke test, ~2 min
"""

from __future__ import annotations

import argparse
import csv
import json
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
from mmvm.evaluation import evaluate_run  # noqa: E402
from mmvm.federation.local import run_local  # noqa: E402
from mmvm.federation.settings import settings_for  # noqa: E402
from mmvm.model import MultimodalVAE  # noqa: E402
from mmvm.training import train  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/polymnist.toml"))
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config override section.key=value (repeatable)")
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--k", type=int, default=8, help="steps per window in 'steps' mode")
    p.add_argument("--local-epochs", type=int, default=5,
                   help="epochs per window in the cheapest ('round') mode")
    p.add_argument("--delta-tol", type=float, default=0.5,
                   help="tolerance of the event-triggered mode (latent units)")
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/federated_vs_centralized"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check it runs")
    return p.parse_args(argv)


MODES = [  # name, exchange, k, local_epochs, float16, warmup, event-triggered
    ("federated: every step", "step", 1, 1, False, False, False),
    ("federated: every k steps", "steps", None, 1, False, False, False),
    ("federated: per round, 1 epoch, fp16", "round", 1, 1, True, False, False),
    ("federated: per round, E epochs, fp16", "round", 1, None, True, False, False),
    ("federated: per round, 1,2,4..E epochs, fp16", "round", 1, None, True, True, False),
    ("federated: per round, 1 epoch, fp16, rows moved > TOL", "round", 1, 1, True, False,
     True),
]


def main(argv=None) -> int:
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
                                        modalities=tuple(names))
    full = Path(files[sites[0].name]["train"]).parents[2]
    cfg = load_config(args.config, args.overrides + [
        f"train.epochs={args.epochs}", "train.device=cpu", f"data.root={full}",
        f"train.out_dir={out / 'central'}"])
    train_set = MultimodalDataset.from_parquet(full / "train.parquet", names)
    test_set = MultimodalDataset.from_parquet(full / "test.parquet", names)
    print(f"data: {len(train_set)} train / {len(test_set)} test at {full}", flush=True)
    clfs = classifiers_for(cfg)
    rows = []

    t0 = time.perf_counter()
    model = train(cfg, train_set, resume=False, show_progress=True).model
    rows.append(_row("centralized", cfg, model, train_set, test_set, clfs,
                     time.perf_counter() - t0, 0))
    print(rows[-1], flush=True)
    for name, exchange, k, local_epochs, f16, warmup, event in MODES:
        k = k or args.k
        local_epochs = local_epochs or args.local_epochs
        label = name.replace("k steps", f"{k} steps").replace("E epochs",
                                                               f"{local_epochs} epochs")
        label = label.replace("..E", f"..{local_epochs}").replace("TOL", f"{args.delta_tol:g}")
        t0 = time.perf_counter()
        settings = settings_for(cfg, exchange=exchange, exchange_steps=k,
                                local_epochs=local_epochs, float16=f16,
                                exchange_warmup=warmup, collect_model=True,
                                delta_tol=args.delta_tol if event else -1.0)
        res, _ = run_local(settings, {s.name: (files[s.name]["train"], None) for s in sites})
        seconds = time.perf_counter() - t0
        fed = MultimodalVAE(cfg.model.modalities, cfg.model.latent_dim)
        fed.load_state_dict({n: torch.as_tensor(v) for n, v in res.model_state.items()})
        rows.append(_row(label, cfg, fed.eval(), train_set, test_set, clfs, seconds,
                         res.bytes_total, windows=len(res.history)))
        print(rows[-1], flush=True)
    exact = next(r["bytes"] for r in rows if r["mode"].endswith("every step"))
    for r in rows:
        r["bytes_vs_exact"] = round(exact / r["bytes"], 1) if r["bytes"] else None
    _write(out, rows, vars(args))
    print(_markdown(rows))
    print(f"\nwritten: {out / 'results.json'}, {out / 'results.csv'}")
    return 0


def _row(mode, cfg, model, train_set, test_set, clfs, seconds, nbytes, windows=0) -> dict:
    ev = evaluate_run(cfg, model, train_set, test_set, clfs)
    return {"mode": mode, "probe": round(ev["probe"]["mean"], 4),
            "coherence": round(ev.get("coherence", {}).get("mean", float("nan")), 4),
            "recon_nll": round(ev["reconstruction"]["total"], 2),
            "seconds": round(seconds, 1), "bytes": int(nbytes), "windows": windows,
            "detail": ev}


def _write(out: Path, rows: list[dict], args: dict) -> None:
    (out / "results.json").write_text(json.dumps({"args": args, "rows": rows}, indent=2,
                                                 default=str))
    fields = ["mode", "probe", "coherence", "recon_nll", "seconds", "bytes",
              "bytes_vs_exact", "windows"]
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _markdown(rows: list[dict]) -> str:
    lines = ["| mode | probe acc | coherence | recon NLL | wall s | MB exchanged | "
             "bytes cut vs exact |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cut = f"{r['bytes_vs_exact']}x" if r["bytes_vs_exact"] else "-"
        lines.append(f"| {r['mode']} | {r['probe']:.3f} | {r['coherence']:.3f} | "
                     f"{r['recon_nll']:.1f} | {r['seconds']:.0f} | {r['bytes'] / 1e6:.1f} | "
                     f"{cut} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
