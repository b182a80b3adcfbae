"""Private id alignment of several sites: time and bytes of ``align = "psi"``.

Runs the secure mode's alignment protocol as the sites and the server run it
(``mmvm.federation.sealed_align`` at each site, ``SealedRouting``'s routing of the
sealed ring sets, site state on disk between steps), with every site's work of one
ring step in its own process, as separate machines would. Sites hold overlapping id
ranges (site i: ids ``10000 i .. 10000 i + n - 1``), so the expected union and
overlaps are known; the benchmark checks them from the tags alone.

    python benchmarks/psi_alignment.py                     # 3 sites x 100k ids
    python benchmarks/psi_alignment.py --sites 3 --ids 10000 --workers 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmvm.federation import sealed_align  # noqa: E402
from mmvm.federation.messages import AlignRequest, payload_bytes  # noqa: E402
from mmvm.federation.policy import SitePolicy  # noqa: E402
from mmvm.federation.sealed_routing import route  # noqa: E402
from mmvm.help_format import DefaultsHelp  # noqa: E402
from mmvm.jsonfile import json_bytes
from mmvm.provenance import environment
from mmvm.secure.keys import SiteKeys, save_public_directory  # noqa: E402
from mmvm.secure.session import SiteSecrets  # noqa: E402


def _ids(i: int, n: int) -> list[str]:
    return [f"patient-{j:08d}" for j in range(10_000 * i, 10_000 * i + n)]


def _step(root: str, name: str, i: int, n: int, req: AlignRequest):
    """One site's ring step, in a fresh process (keys and state from disk)."""
    root = Path(root)
    sec = SiteSecrets.load(root / name / "site_keys.json", root / "public_keys.json",
                           run_id="bench", state_dir=root / name / "state")
    t0 = time.perf_counter()
    reply = sealed_align.align_psi(_Site(_ids(i, n)), sec, req, SitePolicy(test_bed=True))
    return reply, time.perf_counter() - t0


class _Site:
    """What alignment reads of a site: its sample ids."""

    def __init__(self, ids: list[str]) -> None:
        self.data = _Data(ids)


class _Data:
    def __init__(self, ids: list[str]) -> None:
        self.sample_ids = ids

    def __len__(self) -> int:
        return len(self.sample_ids)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelp)
    p.add_argument("--sites", type=int, default=3, help="sites in the ring")
    p.add_argument("--ids", type=int, default=100_000, help="ids per site")
    p.add_argument("--workers", type=int, default=2, help="processes (CPU cores)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "benchmarks/results/psi_alignment"),
                   help="results folder")
    args = p.parse_args(argv)
    names = [f"site{i}" for i in range(args.sites)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        keys = {n: SiteKeys.generate(n) for n in names}
        for n, k in keys.items():
            (root / n / "state").mkdir(parents=True)
            k.save(root / n / "site_keys.json")
        save_public_directory(root / "public_keys.json", {n: k.public for n, k in keys.items()})
        ring, by_name = sorted(names), {n: n for n in names}
        steps, total_bytes, t_all = [], 0, time.perf_counter()
        replies: dict = {}
        with ProcessPoolExecutor(args.workers) as pool:
            for step in range(len(ring)):
                inbox = route({n: r.sealed for n, r in replies.items()}, by_name) \
                    if step else {n: {} for n in names}
                # the described counts travel with every step: each site bounds the
                # ring sets by them before it multiplies
                reqs = {n: AlignRequest(step=step, ring=ring, sealed=inbox[n],
                                        counts={m: args.ids for m in names})
                        for n in names}
                t0 = time.perf_counter()
                futures = {n: pool.submit(_step, tmp, n, i, args.ids, reqs[n])
                           for i, n in enumerate(names)}
                done = {n: f.result() for n, f in futures.items()}
                replies = {n: r for n, (r, _) in done.items()}
                nbytes = sum(payload_bytes(m) for m in (*reqs.values(), *replies.values()))
                total_bytes += nbytes
                steps.append({"step": step, "wall_s": round(time.perf_counter() - t0, 2),
                              "site_cpu_s": round(max(s for _, s in done.values()), 2),
                              "MB": round(nbytes / 1e6, 2)})
                print(steps[-1], flush=True)
        wall = time.perf_counter() - t_all
    # the last ring step: each site hands in the tags of the set it finished (origin)
    tags = {r.origin: set(r.tags) for r in replies.values() if r.origin}
    union = set().union(*tags.values())
    # the ranges overlap only with more than 10,000 ids a site
    expected_union = 10_000 * (args.sites - 1) + args.ids if args.ids > 10_000 \
        else args.sites * args.ids
    common = set.intersection(*tags.values())
    expected_common = max(0, args.ids - 10_000 * (args.sites - 1))
    ok = len(union) == expected_union and len(common) == expected_common
    result = {"sites": args.sites, "ids_per_site": args.ids, "workers": args.workers,
              "wall_s": round(wall, 1), "MB": round(total_bytes / 1e6, 1),
              "union": len(union), "expected_union": expected_union,
              "common": len(common), "expected_common": expected_common,
              "correct": ok, "steps": steps, "environment": environment()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_bytes(json_bytes(result, indent=2))
    print(f"\n| sites | ids per site | workers | wall s | MB | union (expected) | "
          f"in all sites (expected) |\n|---|---|---|---|---|---|---|\n"
          f"| {args.sites} | {args.ids:,} | {args.workers} | {wall:.1f} | "
          f"{total_bytes / 1e6:.1f} | {len(union):,} ({expected_union:,}) | "
          f"{len(common):,} ({expected_common:,}) |")
    print(f"written: {out / 'results.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
