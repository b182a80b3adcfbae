"""What packaging the app costs at the start of every ``flwr run``, as is and staged.

``flwr run DIR`` builds the app's FAB from every file under DIR (Flower 1.41 lists
them all, then filters). ``mmvm run`` hands Flower a staged copy without the
directories Flower never packages (``mmvm/cli/app_stage.py``). Each row runs Flower's
own ``build_fab_from_disk`` ``--repeats`` times (default 3) and reports wall and CPU
seconds (mean ± standard error), the files under the directory Flower walks, and
whether the two FABs are the same bytes. Writes ``results.json`` and ``results.csv``
and prints a table.

    python benchmarks/fab_build.py                    # this project, as installed
    python benchmarks/fab_build.py --app path/to/app  # another Flower app
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flwr.cli.build import build_fab_from_disk  # noqa: E402

from mmvm.cli.app_stage import staged_app  # noqa: E402
from mmvm.help_format import DefaultsHelp  # noqa: E402
from mmvm.jsonfile import json_bytes  # noqa: E402
from mmvm.provenance import environment  # noqa: E402
from mmvm.reporting.stats import estimate  # noqa: E402


def _files_under(path: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(path, followlinks=False))


def measure(app: Path, staged: bool) -> dict:
    """One build: wall and CPU seconds (staging included), files walked, FAB hash."""
    wall, cpu = time.perf_counter(), time.process_time()
    if staged:
        with staged_app(app) as stage:
            fab = build_fab_from_disk(stage)
            walked = _files_under(stage)
    else:
        fab = build_fab_from_disk(app)
        walked = None
    out = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
           "sha256": hashlib.sha256(fab).hexdigest(), "bytes": len(fab)}
    out["files_walked"] = walked if walked is not None else _files_under(app)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=DefaultsHelp)
    p.add_argument("--app", default=str(ROOT), help="the Flower app (default: this one)")
    p.add_argument("--repeats", type=int, default=3, help="builds per row")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/fab_build"),
                   help="results folder")
    args = p.parse_args(argv)
    app = Path(args.app).resolve()
    runs = [{"row": row, "repeat": r, **measure(app, row == "staged")}
            for r in range(args.repeats) for row in ("as is", "staged")]
    same = len({r["sha256"] for r in runs}) == 1
    rows = []
    for row in ("as is", "staged"):
        mine = [r for r in runs if r["row"] == row]
        wall, cpu = (estimate([r[k] for r in mine]) for k in ("wall_s", "cpu_s"))
        rows.append({"row": row, "wall_s": wall.mean, "wall_se": wall.se or 0.0,
                     "cpu_s": cpu.mean, "cpu_se": cpu.se or 0.0, "repeats": len(mine),
                     "files_walked": mine[0]["files_walked"], "fab_bytes": mine[0]["bytes"]})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_bytes(json_bytes(
        {"app": str(app), "same_fab": same, "environment": environment(), "summary": rows,
         "runs": runs}, indent=1))
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"FAB of {app}: the same bytes both ways: {same}")
    print("| Flower packages | wall s | CPU s | files walked | FAB bytes | repeats |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['wall_s']:.2f} ± {r['wall_se']:.2f} | "
              f"{r['cpu_s']:.2f} ± {r['cpu_se']:.2f} | {r['files_walked']} | "
              f"{r['fab_bytes']} | {r['repeats']} |")
    print(f"written: {out / 'results.json'}, {out / 'results.csv'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
