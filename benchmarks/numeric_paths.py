"""Which numeric path a training run took, and what pinning it costs.

A seeded ``mmvm train`` gives the same weights bit for bit when run again on one
host. Another host may not: MKL picks its matrix-product kernels by CPU (the MLP
networks), oneDNN its convolution kernels by instruction set (the conv networks).
This trains each network several times under each path setting, in a fresh process
(the variables are read once, at load), and compares the final weights bit for bit
with the default path's first run: same path again (determinism), MKL pinned to its
reproducible path (``MKL_CBWR=COMPATIBLE``), oneDNN held to AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2``), torch's own kernels held to AVX2
(``ATEN_CPU_CAPABILITY=avx2``), and combinations. ``mmvm.provenance`` records these
variables with every evaluation and checkpoint; each row's ``recorded`` is what the
run's checkpoint says it saw (the top-level ``environment`` is this parent
process's).

Networks: ``mlp`` (configs/hippocampus.toml: 5 rats' spike counts, MLPs) and ``conv``
(configs/polymnist_cpu.toml on a small soft PolyMNIST look-alike), made under
``--work`` with the run folders (each deleted once its weights are read). Writes
results.json (with the environment) and results.csv under ``--out``; prints a table.

    python benchmarks/numeric_paths.py --out benchmarks/results/numeric_paths  # ~9 min
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mmvm.checkpoint import load_checkpoint  # noqa: E402
from mmvm.help_format import DefaultsHelp  # noqa: E402
from mmvm.jsonfile import json_bytes  # noqa: E402
from mmvm.provenance import environment, weights_digest  # noqa: E402

PATHS = {"default": {}, "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
         "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
         "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
         "mkl+onednn": {"MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"},
         "all": {"MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2",
                 "ATEN_CPU_CAPABILITY": "avx2"}}
NETWORKS = {  # name -> (config, data command, overrides)
    "mlp": ("configs/hippocampus.toml", ["hippocampus"], []),
    "conv": ("configs/polymnist_cpu.toml",
             ["polymnist", "--variant", "soft", "--n-train", "600", "--n-test", "100"],
             ["train.batch_size=64"]),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    p.add_argument("--out", default="runs/numeric_paths", help="output folder")
    p.add_argument("--work", default="runs/numeric_paths-work",
                   help="the data and the (deleted) run folders")
    p.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    p.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    p.add_argument("--repeats", type=int, default=2, help="runs per path")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a config override for every run, as mmvm train takes it "
                        "(repeatable), e.g. data.max_train=64")
    return p.parse_args(argv)


def mmvm(args: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "mmvm", *args], check=True, cwd=ROOT,
                   env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)


def weights(run: Path) -> tuple[str, dict[str, torch.Tensor], float, float, dict]:
    """sha256 of the model's weights (sorted by name), the weights, the last epoch's
    loss, the training's seconds (its epochs', without start-up and writing) and the
    environment the checkpoint records."""
    state = load_checkpoint(run / "checkpoint.pt")
    model, history = state["model"], state["history"]
    return (weights_digest(model), model, float(history[-1]["loss"]),
            sum(float(h["seconds"]) for h in history), state["environment"])


def train_once(net: str, data: Path, out: Path, args: argparse.Namespace,
               env: dict[str, str]) -> None:
    config, _, extra = NETWORKS[net]
    sets = [f'data.root="{data}"', f'train.out_dir="{out}"', f"train.epochs={args.epochs}",
            "train.num_threads=1", 'train.device="cpu"', "train.seed=0", *extra, *args.set]
    mmvm(["train", "--config", config, "--no-progress", "--fresh",
          *[a for s in sets for a in ("--set", s)]], env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    rows = []
    for net in args.networks:
        data = work / "data" / net
        if not (data / "train.parquet").is_file():
            mmvm(["data", "make", *NETWORKS[net][1], "--out", str(data), "--quiet"])
        reference: dict[str, torch.Tensor] | None = None
        ref_digest = None
        for path in args.paths:
            for repeat in range(args.repeats):
                run = work / "runs" / f"{net}-{path}-{repeat}"
                train_once(net, data, run, args, PATHS[path])
                digest, model, loss, seconds, env = weights(run)
                shutil.rmtree(run)  # a wide MLP's checkpoints: ~75 MB each
                if reference is None:
                    reference, ref_digest = model, digest
                diff = max(float((model[k] - reference[k]).abs().max()) for k in model)
                rows.append({"network": net, "path": path, "repeat": repeat,
                             "variables": " ".join(f"{k}={v}" for k, v in
                                                   PATHS[path].items()) or "(none)",
                             "train_seconds": round(seconds, 2), "final_loss": loss,
                             "weights_sha256": digest[:16],
                             "same_bits_as_default": digest == ref_digest,
                             "max_abs_weight_diff": diff,
                             "recorded": " ".join([*(f"{k}={v}" for k, v in
                                                    env["numeric_variables"].items()),
                                                  f"threads={env['threads']}"])})
                r = rows[-1]
                print(f"{net:5} {path:15} #{repeat} {seconds:6.2f} s  loss "
                      f"{loss:.9g}  {r['weights_sha256']}  same bits: "
                      f"{r['same_bits_as_default']!s:5}  max |dw| {diff:.2e}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_bytes(json_bytes(
        {"args": vars(args), "environment": environment(), "rows": rows}, indent=2))
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\nwritten: {out / 'results.json'}, {out / 'results.csv'}")
    print(json.dumps({k: environment()[k] for k in ("cpu", "cpu_capability", "torch")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
