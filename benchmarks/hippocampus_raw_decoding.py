"""How much odor each rat's raw counts carry, per look-alike: the yardstick of its signal.

Per rat, a cross-validated logistic regression of the odor (A-D, chance 0.25) on the
spike count of each neuron in the 250 ms after odor onset
(:func:`mmvm.data.odor_decoding.raw_odor_decoding`), for the default look-alike, the
dense (v1) one, and the default with other tuning strengths (log-rate SD of the tuned
neurons). Mean ± standard error over seeds (each seed a new simulation: neurons,
tuning, trials); docs/hippocampus-lookalike.md compares them with decoders on the real
recordings.

    python benchmarks/hippocampus_raw_decoding.py          # ~1 min on 2 CPU cores
    python benchmarks/hippocampus_raw_decoding.py --seeds 0 1 2 3 4 --tunings 0.3,0.5,1
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmvm.data.hippocampus import (  # noqa: E402
    DEFAULTS,
    DENSE_V1,
    MODALITIES,
    RATS,
    preset_name,
    simulate_sessions,
)
from mmvm.data.odor_decoding import raw_odor_decoding  # noqa: E402
from mmvm.help_format import DefaultsHelp  # noqa: E402
from mmvm.jsonfile import json_bytes  # noqa: E402
from mmvm.provenance import environment  # noqa: E402
from mmvm.reporting.stats import estimate  # noqa: E402


def conditions(tunings: list[float]) -> dict[str, dict[str, float]]:
    """Look-alike name -> knobs: the default, the dense v1 one, the tuning sweep."""
    out = {"default": dict(DEFAULTS), "dense (v1)": dict(DENSE_V1)}
    for t in tunings:
        knobs = {**DEFAULTS, "tuning": t}
        if preset_name(knobs) == "custom":
            out[f"tuning {t:g}"] = knobs
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelp)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="look-alike seeds")
    p.add_argument("--tunings", default="0.3,1.0,2.0",
                   type=lambda s: [float(v) for v in s.split(",") if v.strip()],
                   help="tuning strengths besides the default's (comma-separated)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/hippocampus_raw_decoding"),
                   help="results folder")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    conds = conditions(args.tunings)
    for name, knobs in conds.items():
        for seed in args.seeds:
            accs = raw_odor_decoding(simulate_sessions(seed, **knobs), args.folds, seed)
            for m, rat, acc in zip(MODALITIES, RATS, accs, strict=True):
                rows.append({"lookalike": name, **knobs, "seed": seed, "modality": m,
                             "rat": rat, "accuracy": round(acc, 4)})
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    summary = {}
    for name in conds:
        mine = [r for r in rows if r["lookalike"] == name]
        per_rat = {m: estimate(r["accuracy"] for r in mine if r["modality"] == m)
                   for m in MODALITIES}
        rat_mean = estimate(sum(r["accuracy"] for r in mine if r["seed"] == s) / len(RATS)
                            for s in args.seeds)
        summary[name] = {"knobs": conds[name],
                         **{m: vars(e) for m, e in per_rat.items()},
                         "mean over rats": vars(rat_mean)}
    seconds = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_bytes(json_bytes(
        {"args": vars(args), "environment": environment(), "chance": 0.25,
         "seconds": seconds, "summary": summary,
         "rows": rows}, indent=1))
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\nPer-rat raw odor decoding (4 odors, chance 0.25), mean ± SE over "
          f"{len(args.seeds)} seeds:\n")
    head = [f"{m} ({r}, {n})" for m, r, n in zip(MODALITIES, RATS,
                                                 (92, 79, 104, 49, 46), strict=True)]
    print("| look-alike | tuned fraction / tuning / gain SD / noise SD | "
          + " | ".join(head) + " | mean over rats |")
    print("|---|---|" + "---|" * (len(head) + 1))
    for name, s in summary.items():
        k = s["knobs"]
        cells = [f"{s[m]['mean']:.3f} ± {s[m]['se']:.3f}" if s[m]["se"] is not None
                 else f"{s[m]['mean']:.3f}" for m in [*MODALITIES, "mean over rats"]]
        print(f"| {name} | {k['tuned_fraction']:g} / {k['tuning']:g} / {k['gain_sd']:g} / "
              f"{k['noise_sd']:g} | " + " | ".join(cells) + " |")
    print(f"\n{seconds:.0f} s; written: {out / 'results.json'}, {out / 'results.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
