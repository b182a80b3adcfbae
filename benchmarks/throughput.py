"""Training-step throughput on this machine: samples per second of ``train_step``.

Model sizes on the PolyMNIST look-alike's shape (3 x 28 x 28, 3 modalities):

- ``paper``: the authors' ResNet (``polymnist_resnet``, channels 64/128/256), latent
  512, batch 128 (docs/protocol.md, "The paper's settings");
- ``cpu``: ``configs/polymnist.toml`` as it is (``conv28`` width 16, latent 64, batch
  128; the main job's ``polymnist_cpu.toml`` is half as wide at batch 32);

and two chest X-ray views (1 channel, ``res_image``) as their configs train them:
``xray64`` (``configs/mimic_cxr_64.toml``, the two-hospital guide's) and ``xray224``
(``configs/mimic_cxr.toml``, the paper's 224 px);

and, for each, what PyTorch offers on a CPU: threads (1, all cores), Adam's kernels
(``adam``: fused, the default, or torch's per-tensor loop), the NHWC memory format
(``channels_last``), bfloat16 autocast (``amp = "bf16"``) and ``torch.compile``.
Each row: warm-up steps (compilation included there), then timed steps on random
batches (throughput does not depend on the values), repeated ``--repeats`` times
(default 3, each a fresh model): mean ± standard error of samples per second. Writes
``results.json`` and ``results.csv`` and prints a table.

    python benchmarks/throughput.py                       # ~10 min on 2 cores
    python benchmarks/throughput.py --sizes cpu --steps 5  # quick look
    python benchmarks/throughput.py --sizes xray64 xray224 --variants "1 thread" \
        "all threads" --steps 5 --out benchmarks/results/throughput_xray
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmvm import accel  # noqa: E402
from mmvm.config import load_config  # noqa: E402
from mmvm.help_format import DefaultsHelp  # noqa: E402
from mmvm.jsonfile import json_bytes
from mmvm.provenance import environment
from mmvm.reporting.stats import estimate  # noqa: E402
from mmvm.training import build_model, train_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("m0", "m1", "m2")
SIZES = {  # size -> (config file, overrides)
    "paper": ("polymnist.toml", [
        "model.latent_dim=512", "train.batch_size=128",
        *[f"model.modalities.{m}.network=polymnist_resnet" for m in NAMES],
        *[f"model.modalities.{m}.width=64" for m in NAMES]]),
    "cpu": ("polymnist.toml", []),  # the config file as it is
    "xray64": ("mimic_cxr_64.toml", []),
    "xray224": ("mimic_cxr.toml", []),
}
VARIANTS = [  # (label, threads, channels_last, amp, compile, adam)
    ("1 thread", 1, False, "off", False, "fused"),
    ("all threads", 0, False, "off", False, "fused"),
    ("all threads, Adam per-tensor loop", 0, False, "off", False, "loop"),
    ("all threads, channels_last", 0, True, "off", False, "fused"),
    ("all threads, bf16 autocast", 0, False, "bf16", False, "fused"),
    ("all threads, torch.compile", 0, False, "off", True, "fused"),
]


def measure(size: str, threads: int, channels_last: bool, amp: str, compile: bool,
            adam: str, steps: int, warmup: int) -> float:
    config, overrides = SIZES[size]
    cfg = load_config(ROOT / "configs" / config, ["train.device=cpu", *overrides])
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    model = accel.prepare(build_model(cfg), channels_last=channels_last, compile=compile)
    opt = accel.adam(model.parameters(), cfg.train.lr, adam)
    B = cfg.train.batch_size
    specs = cfg.model.modalities
    batch = {"x": {m.name: torch.rand(B, *m.shape) for m in specs},
             "mask": torch.ones(B, len(specs), dtype=torch.bool)}
    if channels_last:
        batch["x"] = {m: accel.to_channels_last(v) for m, v in batch["x"].items()}
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=amp))
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        train_step(model, opt, batch, cfg, step, alpha=0.0)
    return steps * B / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelp)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES),
                   help="network sizes: the paper's, the CPU main job's, or the X-ray "
                        "configs'")
    p.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS],
                   choices=[v[0] for v in VARIANTS], metavar="VARIANT",
                   help="rows to measure, by label")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3, help="measurements per row")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/throughput"),
                   help="results folder")
    args = p.parse_args(argv)
    rows = []
    for size in args.sizes:
        base = None
        for label, threads, cl, amp, comp, adam in VARIANTS:
            if label not in args.variants:
                continue
            try:
                runs = [measure(size, threads, cl, amp, comp, adam, args.steps, args.warmup)
                        for _ in range(args.repeats)]
            except Exception as err:  # e.g. no compiler for torch.compile
                print(f"{size} / {label}: failed ({type(err).__name__}: {err})", flush=True)
                continue
            est = estimate(runs)
            base = base or est.mean
            rows.append({"size": size, "variant": label, "samples_per_s": round(est.mean, 1),
                         "se": round(est.se or 0.0, 1), "repeats": len(runs),
                         "vs_1_thread": round(est.mean / base, 2)})
            print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**environment(), "cores": os.cpu_count(), "steps": args.steps,
            "warmup": args.warmup, "repeats": args.repeats}
    (out / "results.json").write_bytes(json_bytes({"meta": meta, "rows": rows}, indent=2))
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\nmean ± standard error over {args.repeats} repeats\n"
          "| size | variant | samples/s | vs 1 thread |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['variant']} | {r['samples_per_s']} ± {r['se']} | "
              f"{r['vs_1_thread']}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
