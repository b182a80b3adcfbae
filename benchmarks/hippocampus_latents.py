"""The paper's hippocampus figure on the look-alike: 2-D latents of all 5 rats,
coloured by odor, one panel per method; plus pooled and per-rat odor probes.

Trains each method centrally and, for MMVM, federated (5 sites, one rat each, per-round
exchange), on the same data and budget.

    python benchmarks/hippocampus_latents.py                 # ~5 min on 2 CPU cores
    python benchmarks/hippocampus_latents.py --epochs 5      # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmvm.config import load_config  # noqa: E402
from mmvm.data.dataset import MultimodalDataset  # noqa: E402
from mmvm.data.default import ensure_default_sites  # noqa: E402
from mmvm.evaluation import fit_probe  # noqa: E402
from mmvm.federation.local import run_local  # noqa: E402
from mmvm.federation.settings import settings_for  # noqa: E402
from mmvm.model import MultimodalVAE  # noqa: E402
from mmvm.plots import latent_2d  # noqa: E402
from mmvm.training import train  # noqa: E402

ODORS = ["A", "B", "C", "D"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["mmvm", "independent", "avg", "poe"])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--width", type=int, default=64, help="MLP hidden units per rat")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--no-federated", action="store_true")
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/hippocampus"))
    return p.parse_args(argv)


def pooled_means(model: MultimodalVAE, ds: MultimodalDataset, method: str):
    """Unimodal posterior means of every rat, stacked: ([N*M, 2], odor, rat)."""
    b = ds.batch(np.arange(len(ds)))
    with torch.no_grad():
        mu, _ = model.encode(b["x"], b["mask"])
    n, m, d = mu.shape
    return (mu.reshape(n * m, d).numpy(), np.repeat(b["label"].numpy(), m),
            np.tile(np.arange(m), n))


def probes(model, train_set, test_set, method) -> dict:
    xa, ya, ra = pooled_means(model, train_set, method)
    xb, yb, rb = pooled_means(model, test_set, method)
    # standardize=False: this benchmark has always probed the raw latents
    out = {"pooled": fit_probe(xa, ya, standardize=False).score(xb, yb)}
    per_rat = [fit_probe(xa[ra == r], ya[ra == r], standardize=False)
               .score(xb[rb == r], yb[rb == r]) for r in range(int(ra.max()) + 1)]
    out["per_rat_mean"] = float(np.mean(per_rat))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = ROOT / "configs/hippocampus.toml"
    rats = [f"rat{i}" for i in range(1, 6)]
    sites, files = ensure_default_sites(args.data_dir, "vertical", modalities=tuple(rats))
    full = Path(files[sites[0].name]["train"]).parents[2]
    train_set = MultimodalDataset.from_parquet(full / "train.parquet", rats)
    test_set = MultimodalDataset.from_parquet(full / "test.parquet", rats)

    def config(method):
        return load_config(base, [
            f"model.method={method}", f"train.epochs={args.epochs}", f"train.lr={args.lr}",
            "train.device=cpu", f"train.out_dir={out / method}", "train.checkpoint_every=1000",
            f"data.root={full}", *[f"model.modalities.{r}.width={args.width}" for r in rats]])

    mus, labels, rows = {}, {}, []
    for method in args.methods:
        cfg = config(method)
        t0 = time.perf_counter()
        model = train(cfg, train_set, resume=False, show_progress=False).model
        rows.append({"run": method, **probes(model, train_set, test_set, method),
                     "seconds": round(time.perf_counter() - t0, 1)})
        mus[method], labels[method], _ = pooled_means(model, test_set, method)
        print(rows[-1], flush=True)
    if not args.no_federated:
        cfg = config("mmvm")
        t0 = time.perf_counter()
        settings = settings_for(cfg, exchange="round", local_epochs=1, float16=True,
                                collect_model=True, delta_tol=-1.0)
        res, _ = run_local(settings, {s.name: (files[s.name]["train"], None) for s in sites})
        model = MultimodalVAE(cfg.model.modalities, 2)
        model.load_state_dict({k: torch.as_tensor(v) for k, v in res.model_state.items()})
        key = "mmvm federated (5 sites)"
        rows.append({"run": key, **probes(model, train_set, test_set, "mmvm"),
                     "seconds": round(time.perf_counter() - t0, 1),
                     "bytes": res.bytes_total})
        mus[key], labels[key], _ = pooled_means(model, test_set, "mmvm")
        print(rows[-1], flush=True)
    fig = latent_2d(mus, labels, out / "latents.png", label_names=ODORS)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print("| run | pooled odor probe (all rats) | per-rat probe (mean) | s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['pooled']:.3f} | {r['per_rat_mean']:.3f} | {r['seconds']:.0f} |")
    print(f"figure: {fig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
