"""A simulation on your own site files: the run config's ``site-dirs``.

The embedded simulations make their sites' files from a look-alike. A lab that has
prepared one folder per site (``mmvm data prepare ...``: ``train.parquet`` and, for
the final evaluation, ``test.parquet``) lists them instead::

    mmvm run --run-config "config='/labs/rats3.toml' num-sites=3 \
        site-dirs='/labs/site-rat1,/labs/site-rat2,/labs/site-rat3'"

Simulated SuperNode ``i`` is the site of the ``i``-th folder, named after it. With
``eval-data = "default"`` the server's evaluation of the assembled model reads the
same folders joined by sample id (``data.folders`` under their common parent), as
``mmvm train`` does, and ``results.json`` records them so ``mmvm evaluate --run``
reads them again (``server/app.py``; only where the sites that ran are those
folders). A deployment's sites never read the key: their files are their node
config's ``data``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path

from mmvm.config import ConfigError, ExperimentConfig


def parse_site_dirs(text: str) -> tuple[str, ...]:
    """The comma-separated folders of ``site-dirs`` (``~`` expanded); absolute, each
    named differently: the simulation's processes do not run where the run was
    started, and a site is named after its folder."""
    dirs = tuple(str(Path(p.strip()).expanduser()) for p in text.split(",") if p.strip())
    relative = [d for d in dirs if not Path(d).is_absolute()]
    if relative:
        raise ConfigError(f"run config: site-dirs {relative[0]!r} is relative; give "
                          f"absolute folders (the simulation's processes start elsewhere)")
    names = [Path(d).name for d in dirs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"run config: site-dirs has several folders named {twice[0]!r}; "
                          f"a simulated site is named after its folder, so name them apart")
    return dirs


def joined_experiment(cfg: ExperimentConfig, dirs: tuple[str, ...]) -> ExperimentConfig:
    """``cfg`` reading the site folders ``dirs`` joined by sample id: ``data.root``
    their common parent, ``data.folders`` each one under it (the server's evaluation
    and ``mmvm evaluate --run`` read them so)."""
    if not dirs:
        return cfg
    root = os.path.commonpath(dirs)
    folders = tuple(os.path.relpath(d, root) for d in dirs)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=root,
                                                             folders=folders))


def site_dir_problem(folder: str, listed: tuple[str, ...] = ()) -> str | None:
    """Why ``folder`` cannot be a simulated site (no ``train.parquet``), or None; a
    folder that does not exist with the site folder its name is close to, if any (a
    typo; not one of ``listed``)."""
    if not (Path(folder) / "train.parquet").is_file():
        what = "has no train.parquet" if Path(folder).is_dir() else \
            "does not exist" + _near(Path(folder), {Path(d) for d in listed})
        return (f"site-dirs: {folder} {what} (a site folder holds "
                f"the files `mmvm data prepare ...` writes: train.parquet, and "
                f"test.parquet for the final evaluation)")
    return None


def _near(folder: Path, listed: set[Path]) -> str:
    """``"; did you mean /labs/site-rat1?"``: the sibling site folder (one that holds
    a train.parquet, not ``listed``) whose name is closest to the one given, if any."""
    try:
        sites = [p.name for p in folder.parent.iterdir()
                 if (p / "train.parquet").is_file() and p not in listed]
    except OSError:
        return ""
    close = difflib.get_close_matches(folder.name, sorted(sites), n=1)
    return f"; did you mean {folder.parent / close[0]}?" if close else ""


def own_site_files(dirs: tuple[str, ...], pid: int, num: int
                   ) -> tuple[str, str, str | None]:
    """Simulated SuperNode ``pid`` of ``num``: its site's name, train file and test
    file (None without one)."""
    if num != len(dirs):
        raise ConfigError(f"site-dirs lists {len(dirs)} folders but the simulation runs "
                          f"{num} SuperNodes: set num-sites={len(dirs)} (mmvm run starts "
                          f"that many) or --federation-config 'num-supernodes={len(dirs)}'")
    problem = site_dir_problem(dirs[pid], dirs)
    if problem:
        raise ConfigError(problem)
    test = Path(dirs[pid]) / "test.parquet"
    return Path(dirs[pid]).name, str(Path(dirs[pid]) / "train.parquet"), \
        str(test) if test.is_file() else None
