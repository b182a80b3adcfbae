"""Split one multimodal dataset into per-site Parquet files (vertical/horizontal/hybrid).

A site holds some modalities for some samples. The layouts:

- ``vertical``: one site per modality, every sample (hospital A has the frontal views,
  hospital B the lateral views of the same studies);
- ``horizontal``: ``shards`` >= 2 sites, each with every modality for a disjoint part
  of the samples (the classic horizontal federation);
- ``hybrid``: one site per modality, except that the first modality is spread over
  ``shards`` >= 2 sites holding different samples (its weights are averaged among
  them).

``missing`` removes each modality from that fraction of the samples (chosen per
modality from the seed, never leaving a sample with no modality): the site simply has
no record of them, and the mixture prior runs over the modalities a sample has. As a
site file cannot hold a sample with only some of its modalities, ``missing`` needs one
modality per site (vertical, hybrid).
Shard membership and missingness are functions of the seed and the sample id only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mmvm.atomic import atomic_write
from mmvm.data.site_names import SITES_JSON, site_name_problem
from mmvm.data.store import DataError, read_site_table, write_site_table

LAYOUTS = ("vertical", "horizontal", "hybrid")


@dataclass(frozen=True)
class SiteSpec:
    """One site: a name, the modalities it holds and its shard among their holders."""

    name: str
    modalities: tuple[str, ...]
    shard: int = 0
    shards: int = 1


def site_layout(kind: str, modalities: Sequence[str], shards: int = 2) -> list[SiteSpec]:
    """The sites of a named layout (see the module docstring)."""
    mods = list(modalities)
    if not mods or len(set(mods)) != len(mods):
        raise ValueError(f"site layout needs distinct modality names, got {mods}")
    if kind in ("horizontal", "hybrid") and (isinstance(shards, bool) or shards < 2):
        one = ("a single site holding every sample" if kind == "horizontal" else
               "the vertical layout; use that")
        raise ValueError(f"site layout {kind!r}: shards must be >= 2, got {shards} "
                         f"(with one shard it is {one})")
    if kind == "vertical":
        return [SiteSpec(f"site-{m}", (m,)) for m in mods]
    if kind == "horizontal":
        return [SiteSpec(f"site-{k}", tuple(mods), k, shards) for k in range(shards)]
    if kind == "hybrid":
        first = [SiteSpec(f"site-{mods[0]}-{k}", (mods[0],), k, shards) for k in range(shards)]
        return first + [SiteSpec(f"site-{m}", (m,)) for m in mods[1:]]
    raise ValueError(f"unknown site layout {kind!r}; choose one of {list(LAYOUTS)}")


def _unit(seed: int, salt: str, sample_id: str) -> float:
    """A uniform number in [0, 1) from (seed, salt, id): stable across machines."""
    h = hashlib.blake2b(f"{seed}/{salt}/{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def assignment(sample_ids: Sequence[str], sites: Sequence[SiteSpec], missing: float = 0.0,
               seed: int = 0) -> np.ndarray:
    """``bool [N, S]``: which site holds which sample (for each site's modalities)."""
    _check_sites(sites)
    mods = list(dict.fromkeys(m for s in sites for m in s.modalities))
    n = len(sample_ids)
    present = np.ones((n, len(mods)), dtype=bool)
    if missing:
        if not 0.0 <= missing < 1.0:
            raise ValueError(f"missing fraction must be in [0, 1), got {missing}")
        for j, m in enumerate(mods):
            present[:, j] = [_unit(seed, f"missing/{m}", s) >= missing for s in sample_ids]
        empty = ~present.any(1)  # keep at least one modality: the one with the largest draw
        for i in np.flatnonzero(empty):
            present[i, int(np.argmax([_unit(seed, f"missing/{m}", sample_ids[i])
                                      for m in mods]))] = True
    held = np.zeros((n, len(sites)), dtype=bool)
    for k, site in enumerate(sites):
        shard = np.array([int(_unit(seed, "shard", s) * site.shards) for s in sample_ids])
        has_any = present[:, [mods.index(m) for m in site.modalities]].any(1)
        held[:, k] = (shard == site.shard) & has_any
    return held


def split_sites(source: str | Path | Sequence[str | Path], out_dir: str | Path,
                sites: Sequence[SiteSpec], missing: float = 0.0, seed: int = 0,
                allow_empty: bool = True) -> dict:
    """Write ``<out_dir>/<site>/<split>.parquet`` for each split file in ``source``.

    ``source`` is a file or a list of files (e.g. train and test); each split is split
    the same way. Returns ``{site: {split: path}}`` and writes ``sites.json``.
    ``allow_empty`` false: a site that would hold no row of a split (more shards than
    rows, ``missing`` taking every row) raises :class:`DataError` and nothing is
    written (the store reads an empty file, but it can be neither trained nor
    evaluated on).
    """
    paths = [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]
    _check_sites(sites)  # before anything is written
    multi = [s.name for s in sites if len(s.modalities) > 1]
    if missing and multi:
        # a site file has no nulls, so a sample holding only some of such a site's
        # modalities cannot be written: it would be dropped, losing its other modalities
        raise ValueError(f"missing = {missing} needs one modality per site, but sites "
                         f"{multi} hold several (a horizontal layout); use missing = 0 or "
                         f"a vertical / hybrid layout")
    out_dir = Path(out_dir)
    made = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    # every file is written in a staging folder first and moved into place only when
    # all are: a failure partway (a bad source, a full disk) leaves no partial layout
    stage = Path(tempfile.mkdtemp(prefix=".split-", dir=out_dir))
    try:
        staged = _write_sites(paths, stage, sites, missing, seed, allow_empty)
        result: dict[str, dict[str, str]] = {s.name: {} for s in sites}
        for name, files in staged.items():
            (out_dir / name).mkdir(exist_ok=True)
            for split, f in files.items():
                result[name][split] = str(out_dir / name / Path(f).name)
                os.replace(f, result[name][split])
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if made:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    shutil.rmtree(stage, ignore_errors=True)
    index = {"sites": [asdict(s) for s in sites], "missing": missing, "seed": seed,
             "files": result}
    atomic_write(out_dir / SITES_JSON, json.dumps(index, indent=2).encode(), mode=0o644)
    return result


def _write_sites(paths: Sequence[Path], out_dir: Path, sites: Sequence[SiteSpec],
                 missing: float, seed: int, allow_empty: bool) -> dict[str, dict[str, str]]:
    """Each site's file of each split in ``paths``, written under ``out_dir``."""
    result: dict[str, dict[str, str]] = {s.name: {} for s in sites}
    for path in paths:
        table = read_site_table(path)
        for s in sites:
            unknown = [m for m in s.modalities if m not in table.tensors]
            if unknown:
                raise DataError(f"{path}: site {s.name!r} wants modalities {unknown}; "
                                f"the file has {table.modalities}")
        held = assignment(table.sample_ids, sites, missing, seed)
        empty = [s for k, s in enumerate(sites) if not held[:, k].any()]
        if empty and not allow_empty:
            raise DataError(_empty_site(path, empty[0], len(table), missing))
        for k, s in enumerate(sites):
            rows = np.flatnonzero(held[:, k])
            meta = {**table.dataset_meta, "site": asdict(s), "missing": missing,
                    "split_seed": seed, "source": str(path)}
            out = write_site_table(
                out_dir / s.name / path.name, [table.sample_ids[i] for i in rows],
                {m: table.tensors[m][rows] for m in s.modalities},
                {k2: v[rows] for k2, v in table.labels.items()}, meta,
                columns={c: v[rows] for c, v in table.columns.items()
                         if c == table.dataset_meta.get("group_column")} or None,
                scales={m: table.scales[m] for m in s.modalities})
            result[s.name][path.stem] = str(out)
    return result


def _empty_site(path: Path, site: SiteSpec, rows: int, missing: float) -> str:
    """Why ``site`` would hold none of the ``rows`` rows of ``path``."""
    if rows == 0:
        why = "the file has no rows"
    elif site.shards > rows:
        why = (f"{site.shards} shards of {rows} rows leave one empty: use at most "
               f"{rows} shards")
    elif site.shards > 1:
        why = (f"shard {site.shard + 1} of {site.shards} drew none of the {rows} rows "
               f"(a row's shard follows from its sample id and the seed): use fewer "
               f"shards or another seed")
    else:
        why = f"missing = {missing:g} left it none of the {rows} rows: use less missing"
    return (f"{path}: site {site.name!r} would hold no rows: {why}; an empty site file "
            f"can be neither trained nor evaluated on, so nothing was written")


def _check_sites(sites: Sequence[SiteSpec]) -> None:
    if not sites:
        raise ValueError("no sites given")
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ValueError(f"site names must be unique, got {names}")
    problem = next(filter(None, map(site_name_problem, names)), None)
    if problem:
        raise ValueError(problem)
    by_mod: dict[str, list[SiteSpec]] = {}
    for s in sites:
        if not s.modalities:
            raise ValueError(f"site {s.name!r} holds no modality")
        if not 0 <= s.shard < s.shards:
            raise ValueError(f"site {s.name!r}: shard {s.shard} not in [0, {s.shards})")
        for m in s.modalities:
            by_mod.setdefault(m, []).append(s)
    for m, holders in by_mod.items():
        counts = {h.shards for h in holders}
        shards = sorted(h.shard for h in holders)
        if len(counts) != 1 or shards != list(range(counts.pop())):
            raise ValueError(f"modality {m!r}: its sites {[h.name for h in holders]} must "
                             f"hold shards 0..n-1 of the same n exactly once")
