"""Lab values in clinical units, as tables arrive, against the same tables prepared
with ``--standardize``: does the model train, and what do its latents carry?

A ward look-alike: visits with an outcome (3 classes) and two tables of the same
visits, each a noisy view of the visit's state: labs (sodium ~140, creatinine ~1,
WBC ~8,000, lactate ~2, platelets ~250,000) and vitals (heart rate ~85, temperature
~37, systolic pressure ~120). Each table goes through ``mmvm data prepare table``
(raw, or ``--standardize``), then ``mmvm train`` (MMVM, MSE decoders) and ``mmvm
evaluate`` (probes on the test split, coherence with the vitals/labs judges). Four
conditions: every lab raw; raw without the two columns in the thousands (WBC,
platelets), i.e. values within 0..150; the same columns standardized (the paired
comparison); every lab standardized. Mean ± standard error over seeds (each seed a
new ward and a new training).

    python benchmarks/standardize.py                  # minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmvm.cli import main as mmvm  # noqa: E402
from mmvm.help_format import DefaultsHelp  # noqa: E402
from mmvm.jsonfile import json_bytes  # noqa: E402
from mmvm.provenance import environment  # noqa: E402
from mmvm.reporting.stats import estimate  # noqa: E402

LABS = {"sodium": (140, 3), "creatinine": (1.0, 0.3), "wbc": (8000, 2000),
        "lactate": (2.0, 0.8), "platelets": (250_000, 50_000)}
VITALS = {"hr": (85, 12), "temp": (37.0, 0.5), "sbp": (120, 15)}
LARGE = ("wbc", "platelets")
CONDITIONS = {"raw": (False, ()), "raw, no columns in the thousands": (False, LARGE),
              "standardized, no columns in the thousands": (True, LARGE),
              "standardized": (True, ())}


def ward(path: Path, n: int, seed: int) -> None:
    """labs.csv and vitals.csv of ``n`` visits: each column = its mean + its SD x
    (a mix of the visit's 2-D state, through the outcome, plus noise)."""
    rng = np.random.default_rng(seed)
    outcome = rng.integers(0, 3, n)
    state = np.stack([outcome - 1.0, (outcome == 1) * 1.0], 1) + 0.6 * rng.normal(size=(n, 2))
    names = ("none", "sepsis", "shock")
    for table, cols in (("labs", LABS), ("vitals", VITALS)):
        mix = rng.normal(size=(2, len(cols)))
        z = state @ mix / np.sqrt(2) + 0.5 * rng.normal(size=(n, len(cols)))
        lines = ["visit,outcome," + ",".join(cols)]
        for i in range(n):
            vals = [f"{m + s * z[i, j]:.4g}" for j, (m, s) in enumerate(cols.values())]
            lines.append(f"v{i:05d},{names[outcome[i]]}," + ",".join(vals))
        (path / f"{table}.csv").write_text("\n".join(lines) + "\n")


def config(root: Path, out: Path, widths: dict[str, int], epochs: int, seed: int) -> str:
    mods = "".join(f'[model.modalities.{m}]\nkind = "vector"\nshape = [{w}]\n'
                   f'likelihood = "mse"\nwidth = 32\nlayers = 2\n' for m, w in widths.items())
    return (f'[data]\nroot = "{root}"\nfolders = ["site-labs", "site-vitals"]\n'
            f'[model]\nmethod = "mmvm"\nlatent_dim = 4\n{mods}'
            f'[train]\nepochs = {epochs}\nbatch_size = 64\nlr = 1e-3\nseed = {seed}\n'
            f'device = "cpu"\nnum_threads = 1\nout_dir = "{out}"\n'
            f'[eval]\nclassifier_epochs = 20\n')


def run(work: Path, condition: str, seed: int, n: int, epochs: int) -> dict:
    standardize, drop = CONDITIONS[condition]
    data = work / "data"
    widths = {"labs": len(LABS) - len(drop), "vitals": len(VITALS)}
    for table in ("labs", "vitals"):
        argv = ["data", "prepare", "table", "--modality",
                f"{table}={work / f'{table}.csv'}", "--id-column", "visit", "--out",
                str(data / f"site-{table}"), "--quiet", "--force"]
        argv += ["--label", "outcome"] if table == "labs" else ["--drop", "outcome"]
        argv += [a for c in drop for a in ("--drop", c)] if table == "labs" else []
        argv += ["--standardize"] if standardize else []
        with contextlib.redirect_stdout(io.StringIO()):
            assert mmvm(argv) == 0, argv
    cfg = work / "run.toml"
    cfg.write_text(config(data, work / "run", widths, epochs, seed))
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        trained = mmvm(["train", "--config", str(cfg), "--no-progress", "--fresh"]) == 0
    row = {"condition": condition, "seed": seed, "trained": trained,
           "why": "" if trained else err.getvalue().strip().splitlines()[-1][:160]}
    if not trained:
        return row | {"probe": None, "coherence": None, "chance": None}
    with contextlib.redirect_stdout(io.StringIO()):
        assert mmvm(["evaluate", "--config", str(cfg), "--no-plot"]) == 0
    ev = json.loads((work / "run" / "eval.json").read_text())
    return row | {"probe": ev["probe"]["mean"], "coherence": ev["coherence"]["mean"],
                  "chance": ev["chance"]["majority"]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelp)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--n", type=int, default=1500, help="visits per ward")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--work", default="/tmp/mmvm-standardize", help="scratch folder")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/standardize"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out, rows, t0 = Path(args.out), [], time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for condition in CONDITIONS:
            work = Path(args.work) / f"seed{seed}-{condition.replace(', ', '-').replace(' ', '_')}"
            work.mkdir(parents=True, exist_ok=True)
            ward(work, args.n, seed)
            rows.append(run(work, condition, seed, args.n, args.epochs))
            print(rows[-1], flush=True)
    summary = {}
    for c in CONDITIONS:
        mine = [r for r in rows if r["condition"] == c]
        done = [r for r in mine if r["trained"]]
        summary[c] = {"trained": f"{len(done)}/{len(mine)}",
                      **{k: vars(estimate(r[k] for r in done)) if done else None
                         for k in ("probe", "coherence", "chance")}}
    (out / "results.json").write_bytes(json_bytes(
        {"args": vars(args), "environment": environment(),
         "seconds": round(time.perf_counter() - t0, 1),
         "summary": summary, "rows": rows}, indent=1))
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("\n| condition | trained | probe (mean over modalities) | coherence | chance |"
          "\n|---|---|---|---|---|")
    for c, s in summary.items():
        cell = lambda e: "—" if e is None else f"{e['mean']:.3f}" + (  # noqa: E731
            f" ± {e['se']:.3f}" if e["se"] is not None else "")
        print(f"| {c} | {s['trained']} | {cell(s['probe'])} | {cell(s['coherence'])} | "
              f"{cell(s['chance'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
