"""What verifiable secure aggregation costs a site: the sketch rows of its masked
update and the check of the server's mean (``mmvm.secure.sketch``), by model size.

For each size the weights are drawn like a trained model's (normal, sd 0.022, the
hippocampus network's); a site computes every holder's rows of them (``holders``
row blocks, what ``sealed_weights.masked_weights`` appends) and checks a mean (its
own rows and the tolerance). Also: the bytes the rows add to a masked update and to
the mean, against the masked weights' own, and the tolerance in the units a forger
needs (a change spread over all parameters, ``tol * sqrt(N)``, or on one,
``tol * sqrt(N / 3)``) for ``--weight`` samples.

    python benchmarks/sketch_cost.py
    python benchmarks/sketch_cost.py --sizes 100000 1000000 --holders 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmvm.help_format import DefaultsHelp  # noqa: E402
from mmvm.jsonfile import json_bytes  # noqa: E402
from mmvm.provenance import environment  # noqa: E402
from mmvm.secure import sketch  # noqa: E402


def _seconds(work, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(size: int, holders: int, weight: float, repeat: int) -> dict:
    weights = [np.random.default_rng(size).normal(0, 0.022, size).astype(np.float32)]
    keys = [sketch.new_key() for _ in range(holders)]
    sketch_s = _seconds(lambda: [sketch.rows(k, 1, weights) for k in keys], repeat)
    rows = sketch.rows(keys[0], 1, weights)
    check_s = _seconds(lambda: sketch.matches(keys[0], 1, weights, rows, holders, weight),
                       repeat)
    tol = sketch.tolerance(weights, holders, weight)
    n = size + 1
    return {"parameters": size, "holders": holders, "weight": weight,
            "sketch_s": round(sketch_s, 4), "check_s": round(check_s, 4),
            "update_bytes_added": holders * sketch.ROWS * 8,
            "mean_bytes_added": holders * sketch.ROWS * 8 + 16,
            "update_bytes_weights": 8 * (size + 1),
            "tolerance": tol, "spread_change_passes_below": tol * math.sqrt(n),
            "one_parameter_change_passes_below": tol * math.sqrt(n / 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelp)
    p.add_argument("--sizes", type=int, nargs="+",
                   default=[100_000, 1_000_000, 3_400_000, 11_000_000],
                   help="shared parameters of one modality")
    p.add_argument("--holders", type=int, default=3, help="holders of the modality")
    p.add_argument("--weight", type=float, default=192.0,
                   help="the mean's total weight (samples of its holders)")
    p.add_argument("--repeat", type=int, default=3, help="timings per size (median)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1]
                                        / "benchmarks/results/sketch_cost"),
                   help="results folder")
    args = p.parse_args(argv)
    rows = []
    for size in args.sizes:
        rows.append(measure(size, args.holders, args.weight, args.repeat))
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_bytes(json_bytes(
        {"rows": rows, "environment": environment()}, indent=2))
    print(f"\n| parameters | sketch s ({args.holders} holders) | check s | bytes added "
          f"to an update | of the weights' | tolerance | spread change passes below | "
          f"one parameter |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['parameters']:,} | {r['sketch_s']:.3f} | {r['check_s']:.3f} | "
              f"{r['update_bytes_added']:,} | "
              f"{r['update_bytes_added'] / r['update_bytes_weights']:.1e} | "
              f"{r['tolerance']:.1e} | {r['spread_change_passes_below']:.1e} | "
              f"{r['one_parameter_change_passes_below']:.1e} |")
    print(f"written: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
