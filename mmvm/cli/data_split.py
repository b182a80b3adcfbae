"""``mmvm data split``: one dataset into one folder per site (a site layout).

Everything is checked before anything is written: the files' modalities, the site
names (:mod:`mmvm.data.site_names`), the output folder; the site files are staged
and moved into place together (:func:`mmvm.data.sites.split_sites`)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from mmvm.cli.data_common import (
    add_force,
    check_split_out,
    handles,
    old_layout,
    remove_stale,
    report_paths,
)
from mmvm.cli.outputs import check_folder_out


def add_split(sub: argparse._SubParsersAction) -> None:
    """Add ``mmvm data split``."""
    sp = sub.add_parser(
        "split", help="split a dataset into one folder per site (a site layout)",
        description="Write OUT/<site>/<file name> for each FILE (train and test are "
                    "split the same way) and OUT/sites.json. Layouts: vertical, one "
                    "site per modality; horizontal, --shards sites with every modality "
                    "for disjoint samples; hybrid, the first modality over --shards "
                    "sites and one site for each other modality.")
    sp.add_argument("files", nargs="+", metavar="FILE", help="dataset .parquet files")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--layout", default="vertical",
                    help="vertical, horizontal or hybrid (default %(default)s)")
    sp.add_argument("--shards", type=int, default=2,
                    help="sites a modality is spread over, at least 2 (horizontal, "
                         "hybrid; default %(default)s)")
    sp.add_argument("--missing", type=float, default=0.0,
                    help="fraction of each modality's samples left out at random "
                         "(one modality per site only; default %(default)g)")
    sp.add_argument("--seed", type=int, default=0,
                    help="split seed (default %(default)s)")
    sp.add_argument("--names", default="",
                    help="comma-separated site folder names, in the layout's order "
                         "(default site-<modality>, site-<k>, ...)")
    add_force(sp, "a site layout (sites.json, or a folder of a site to write); the "
                  "files the old sites.json lists that the new layout does not write "
                  "are removed, and so are the old site folders they leave empty")
    handles(sp, split)


def split(args: argparse.Namespace) -> int:
    from mmvm.data.site_names import site_name_problem
    from mmvm.data.sites import site_layout, split_sites
    from mmvm.data.store import read_site_meta

    # everything is checked before anything is written
    check_folder_out(args.out)
    metas = {f: read_site_meta(f) for f in args.files}
    modalities = list(metas[args.files[0]]["tensors"])
    for f in args.files[1:]:
        lacking = [m for m in modalities if m not in metas[f]["tensors"]]
        if lacking:
            raise ValueError(f"{f}: lacks modalities {lacking} of {args.files[0]}")
    if len({Path(f).name for f in args.files}) != len(args.files):
        raise ValueError(f"FILEs {args.files}: two have the same name and would be "
                         f"written over each other in a site's folder")
    sites = site_layout(args.layout, modalities, args.shards)
    shards = max(s.shards for s in sites)
    for f, meta in metas.items():  # a site of no rows: an empty site file
        rows = meta["num_rows"]
        if not rows:
            raise ValueError(f"{f}: has no rows; every site's file of it would be empty "
                             f"(nothing trains or is evaluated on one)")
        if rows < shards:
            raise ValueError(f"--shards {shards}: {f} has {rows} rows, fewer than the "
                             f"shards; a site would get none (an empty site file, on "
                             f"which nothing trains or is evaluated): give at most "
                             f"{rows} shards")
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    problem = next(filter(None, map(site_name_problem, names)), None)
    if problem:
        raise ValueError(f"--names: {problem}")
    if names:
        if len(names) != len(sites) or len(set(names)) != len(names):
            raise ValueError(f"--names: {len(sites)} distinct names needed for the "
                             f"{args.layout} layout's sites "
                             f"{[s.name for s in sites]}, got {names}")
        sites = [dataclasses.replace(s, name=n) for s, n in zip(sites, names, strict=True)]
    out = Path(args.out)
    check_split_out(out, [s.name for s in sites], args.files, args.force)
    old = old_layout(out) if args.force else {}
    written = split_sites(args.files, out, sites, missing=args.missing, seed=args.seed,
                          allow_empty=False)
    report_paths({f"{site} {Path(f).stem}": f for site, files in written.items()
                  for f in files.values()})
    for note in remove_stale(out, old, written, args.files):
        print(f"note: {note}")
    return 0
