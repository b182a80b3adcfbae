"""How a site reads batches of random rows (the shared permutation federated sites
train in) from a file larger than it wants to hold: whole in memory, streamed by
Parquet row group, or streamed from a decoded copy (``mmvm.data.decoded``).

Each mode runs in a fresh process (the peak memory it adds to the imports is its
own): the open (for the
decoded copy, the first open decodes the file and a second reuses it), then
``--batches`` batches of ``--batch`` rows in permutation order, ``--repeats`` times.

    python benchmarks/streaming_reads.py
    python benchmarks/streaming_reads.py --rows 2000 --batches 5 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmvm.help_format import DefaultsHelp  # noqa: E402

MODES = ("memory", "row-groups", "decoded-copy")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one(mode: str, file: Path, work: Path, batch: int, batches: int) -> dict:
    """One mode, measured in this process."""
    import numpy as np
    import torch

    from mmvm.data.dataset import MultimodalDataset
    from mmvm.data.streaming import StreamingDataset
    from mmvm.schedule import epoch_batches

    torch.set_num_threads(1)
    before = _peak_mib()
    t0 = time.perf_counter()
    if mode == "memory":
        ds = MultimodalDataset.from_parquet([file])
    else:
        folder = work / "decoded" if mode == "decoded-copy" else ""
        ds = StreamingDataset([file], decoded_dir=folder)
    opened = time.perf_counter() - t0
    reopened = None
    if mode == "decoded-copy":
        t0 = time.perf_counter()
        ds = StreamingDataset([file], decoded_dir=work / "decoded")
        reopened = time.perf_counter() - t0
    rows = list(epoch_batches(len(ds), batch, 0, 0))[:batches]
    times = []
    for r in rows:
        t0 = time.perf_counter()
        ds.batch(np.asarray(r))
        times.append(time.perf_counter() - t0)
    disk = sum(p.stat().st_size for p in (work / "decoded").glob("*.npy")) \
        if mode == "decoded-copy" else 0
    return {"mode": mode, "open_s": opened, "reopen_s": reopened,
            "batch_ms": 1000 * statistics.median(times),
            "peak_rss_mib": _peak_mib(), "added_rss_mib": _peak_mib() - before,
            "disk_mib": disk / 2**20}


def make_file(path: Path, rows: int, side: int, group: int) -> None:
    import numpy as np

    from mmvm.data.store_write import write_site_table

    rng = np.random.default_rng(0)
    write_site_table(path, [f"s{i:07d}" for i in range(rows)],
                     {"img": rng.integers(0, 256, (rows, 3, side, side), dtype=np.uint8)},
                     {"label": rng.integers(0, 10, rows)}, {"name": "streaming-bench"},
                     row_group_size=group)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelp)
    p.add_argument("--rows", type=int, default=20_000, help="rows of the site file")
    p.add_argument("--side", type=int, default=64, help="image side (3 channels, uint8)")
    p.add_argument("--row-group", type=int, default=1024, help="rows per row group")
    p.add_argument("--batch", type=int, default=64, help="rows per batch")
    p.add_argument("--batches", type=int, default=30, help="batches timed (median)")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per mode")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/streaming_reads"),
                   help="results folder (results.json, results.csv)")
    p.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:  # a child: one mode, its result on stdout
        print(json.dumps(one(args.one, Path(args.work) / "site.parquet", Path(args.work),
                             args.batch, args.batches)))
        return 0
    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    make_file(work / "site.parquet", args.rows, args.side, args.row_group)
    results = []
    for rep in range(args.repeats):
        for mode in MODES:
            shutil.rmtree(work / "decoded", ignore_errors=True)
            done = subprocess.run([sys.executable, __file__, "--one", mode, "--work",
                                   str(work), "--batch", str(args.batch), "--batches",
                                   str(args.batches)], capture_output=True, text=True,
                                  check=True)
            results.append({"repeat": rep, **json.loads(done.stdout.splitlines()[-1])})
            print(results[-1], flush=True)
    shutil.rmtree(work)
    setup = {k: getattr(args, k) for k in ("rows", "side", "row_group", "batch",
                                           "batches", "repeats")}
    (out / "results.json").write_text(json.dumps({"setup": setup, "runs": results},
                                                 indent=2))
    keys = list(results[0])
    (out / "results.csv").write_text("\n".join(
        [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in results]) + "\n")
    print(f"\n{args.rows:,} rows of 3x{args.side}x{args.side} uint8, row groups of "
          f"{args.row_group:,}, batches of {args.batch} in permutation order "
          f"(mean ± sd of {args.repeats} processes)\n")
    print("| mode | open s | batch ms | peak memory added, MiB | disk MiB |\n"
          "|---|---|---|---|---|")
    for mode in MODES:
        rs = [r for r in results if r["mode"] == mode]

        def ms(key: str, rs=rs) -> str:
            v = [r[key] for r in rs]
            return f"{statistics.mean(v):.3g} ± {statistics.stdev(v) if len(v) > 1 else 0:.2g}"

        opened = ms("open_s") + (f" (again: {ms('reopen_s')})" if mode == "decoded-copy"
                                 else "")
        print(f"| {mode} | {opened} | {ms('batch_ms')} | {ms('added_rss_mib')} | "
              f"{ms('disk_mib')} |")
    print(f"written: {out / 'results.json'}, {out / 'results.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
