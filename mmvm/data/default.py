"""The embedded default federations: a look-alike dataset split into site files.

Which look-alike is chosen by the experiment's modalities: ``m0, m1, m2`` -> the
PolyMNIST look-alike (``n_train``/``n_test`` samples), ``rat1..rat5`` -> the
hippocampus look-alike (its size is fixed by its trial counts; ``hippocampus``: its
knobs over the defaults, each set of knobs in a folder of its own).

Made on first use, under a file lock, so that several simulated sites starting at
once on one machine build it exactly once. Every file is written atomically, so a run
killed half way leaves nothing half-written.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from mmvm.data.hippocampus import MODALITIES as RAT_MODALITIES
from mmvm.data.hippocampus import make_hippocampus
from mmvm.data.hippocampus_knobs import knobs_tag, resolve_knobs
from mmvm.data.polymnist import make_polymnist
from mmvm.data.sites import SiteSpec, site_layout, split_sites


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def hippocampus_folder(root: str | Path, seed: int,
                       knobs: Mapping[str, float] | None = None) -> Path:
    """``<root>/hippocampus-seed<seed>-<knobs tag>``: one folder per simulation, so a
    folder made with other knobs (or before they existed) is never taken for it."""
    return Path(root).expanduser() / f"hippocampus-seed{seed}-{knobs_tag(knobs or {})}"


def check_default_modalities(modalities: Sequence[str]) -> None:
    """Refuse modalities a simulation cannot make data for: its sites' files are
    the embedded look-alikes (PolyMNIST's m0, m1, m2; the hippocampus rats)."""
    if tuple(modalities) not in (tuple(RAT_MODALITIES), ("m0", "m1", "m2")):
        raise ValueError(
            f"no embedded default data for modalities {list(modalities)} (a simulation "
            f"makes its sites' files only for the PolyMNIST look-alike, m0 m1 m2, and "
            f"the hippocampus rats); to simulate sites with their own files list their "
            f"folders: site-dirs='/abs/site-a,/abs/site-b' (num-sites = their count); "
            f"a deployment's sites are SuperNodes with data=\"/path/to/site\" in their "
            f"node config (deploy/README.md section 5), run with --connection ... "
            f"--deployment")


def default_folder(data_dir: str | Path, modalities: tuple[str, ...], seed: int,
                   n_train: int, n_test: int, variant: str = "translated",
                   hippocampus: Mapping[str, float] | None = None) -> Path:
    """Where :func:`ensure_default_sites` makes the look-alike of ``modalities``."""
    root = Path(data_dir).expanduser()
    check_default_modalities(modalities)
    if tuple(modalities) == tuple(RAT_MODALITIES):
        return hippocampus_folder(root, seed, resolve_knobs(hippocampus))
    prefix = "polymnist" if variant == "translated" else f"polymnist-{variant}"
    return root / f"{prefix}-seed{seed}-n{n_train}-{n_test}"


def ensure_default_sites(data_dir: str | Path, layout: str = "vertical", shards: int = 2,
                         missing: float = 0.0, n_train: int = 3000, n_test: int = 1000,
                         seed: int = 0, modalities: tuple[str, ...] = ("m0", "m1", "m2"),
                         variant: str = "translated",
                         hippocampus: Mapping[str, float] | None = None
                         ) -> tuple[list[SiteSpec], dict[str, dict[str, str]]]:
    """Sites of ``layout`` and their ``{site: {"train": path, "test": path}}`` files.
    ``variant``: the PolyMNIST look-alike's (``mmvm.data.polymnist.VARIANTS``);
    ``hippocampus``: the hippocampus look-alike's knobs (``mmvm.data.hippocampus_knobs``,
    None = the defaults)."""
    root = Path(data_dir).expanduser()
    full = default_folder(root, modalities, seed, n_train, n_test, variant, hippocampus)
    if tuple(modalities) == tuple(RAT_MODALITIES):
        knobs = resolve_knobs(hippocampus)
        make = lambda: make_hippocampus(full, seed=seed, **knobs)  # noqa: E731
    else:
        make = lambda: make_polymnist(full, seed=seed, n_train=n_train,  # noqa: E731
                                      n_test=n_test, variant=variant)
    sites = site_layout(layout, modalities, shards)
    tag = f"sites-{layout}-{shards}-missing{missing:g}"
    out = full / tag
    with _locked(root / ".lock"):
        if not all((full / f).exists() for f in ("train.parquet", "test.parquet")):
            make()  # the pair is moved into place together, the test file first
        if not (out / "sites.json").exists():
            split_sites([full / "train.parquet", full / "test.parquet"], out, sites,
                        missing=missing, seed=seed)
    files = json.loads((out / "sites.json").read_text())["files"]
    return sites, files
