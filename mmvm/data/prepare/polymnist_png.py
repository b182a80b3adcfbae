"""Translated PolyMNIST as published (thomassutter/mmvmvae) -> site Parquet.

Published layout (``utils/PolyMNISTDataset.py``, ``_create_mmnist_dataset``)::

    <src>/train/m0/<i>.<digit>.png  ...  <src>/train/m<M-1>/<i>.<digit>.png
    <src>/test/m0/...

RGB 28x28 PNGs; ``<i>`` is the position in that modality's permutation of the
split's images of class ``<digit>``, so the file *name* ``<i>.<digit>.png`` is the
sample: the same name in every modality folder makes one multimodal sample sharing
the digit label. (The authors' loader pairs files by ``glob`` order, which only
works when every folder lists identically; pairing by name is what that relies on.)

Output: ``<out>/train.parquet`` and ``<out>/test.parquet`` with modalities
``m0..m<M-1>`` (uint8 ``[3, 28, 28]``, scale 255), ``label`` (digit) and sample id
``<split>-<digit>-<i>``. A name present in one modality folder and missing in
another raises :class:`DataError` naming both (no partial output). Each file is
streamed one row group of images at a time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmvm.data.prepare import (
    Progress,
    batched,
    final_paths,
    reported,
    staged_output,
    step_fn,
)
from mmvm.data.prepare.images import load_image
from mmvm.data.store import DataError, SiteChunk, write_site_table_batches

NAME = re.compile(r"^(\d+)\.(\d)\.png$")
SPLITS = ("train", "test")


def _index(folder: Path) -> dict[str, Path]:
    files = {}
    for p in folder.iterdir():
        if p.suffix.lower() != ".png":
            continue
        if not NAME.match(p.name):
            raise DataError(f"{p}: file name is not <index>.<digit>.png")
        files[p.name] = p
    if not files:
        raise DataError(f"{folder}: no <index>.<digit>.png files")
    return files


def _chunks(split: str, mods: list[str], names: list[str],
            index: dict[str, dict[str, Path]], n: int) -> Iterator[SiteChunk]:
    """The samples ``names`` of ``split``, ``n`` at a time, decoded when asked for:
    one uint8 ``[n, 3, 28, 28]`` tensor per modality, the digit as ``label``."""
    for part in batched(names, n):
        x: dict[str, list[np.ndarray]] = {m: [] for m in mods}
        for name in part:
            for m in mods:
                img = load_image(index[m][name], "RGB")
                if img.shape != (3, 28, 28):
                    raise DataError(f"{index[m][name]}: expected a 28x28 image, got "
                                    f"{img.shape[2]}x{img.shape[1]}")
                x[m].append(img)
        match = [NAME.match(name) for name in part]
        yield SiteChunk([f"{split}-{g[2]}-{g[1]}" for g in match],
                        {m: np.stack(v) for m, v in x.items()},
                        {"label": np.array([int(g[2]) for g in match], np.int64)})


def prepare_polymnist_png(src: str | os.PathLike, out_dir: str | os.PathLike, *,
                          splits: tuple[str, ...] = SPLITS,
                          row_group_size: int = 1024,
                          progress: Progress | None = None) -> dict[str, Path]:
    """Convert the PNG folders of each split into one Parquet file per split.

    Parameters
    ----------
    src : root holding ``train/`` and ``test/`` with ``m0, m1, ...`` sub-folders.
    out_dir : output folder; written atomically (nothing on error).
    splits : split folders to convert.
    """
    src = Path(src)
    plan = {}
    for split in splits:
        d = src / split
        mods = sorted((p.name for p in d.glob("m*") if p.is_dir()
                       and re.fullmatch(r"m\d+", p.name)), key=lambda s: int(s[1:]))
        if not mods:
            raise DataError(f"{d}: no modality folders m0, m1, ... found")
        index = {m: _index(d / m) for m in mods}
        names = set(index[mods[0]])
        for m in mods[1:]:
            diff = names.symmetric_difference(index[m])
            if diff:
                f = sorted(diff)[0]
                where, miss = (mods[0], m) if f in names else (m, mods[0])
                raise DataError(f"{d / miss / f}: missing, but {d / where / f} exists "
                                f"({len(diff)} unpaired files); modalities are paired "
                                f"by file name")
        key = lambda n: (int(NAME.match(n)[2]), int(NAME.match(n)[1]))  # noqa: E731
        plan[split] = (mods, sorted(names, key=key), index)
    total = sum(len(v[1]) for v in plan.values())
    step = step_fn(progress, total)
    done, paths = 0, {}
    with staged_output(out_dir) as stage:
        for split, (mods, names, index) in plan.items():
            meta = {"name": "translated-polymnist", "source": str(src.resolve()),
                    "split": split, "n": len(names), "modalities": mods,
                    "layout": "<split>/m<k>/<i>.<digit>.png, paired by file name",
                    "created_by": "mmvm.data.prepare.polymnist_png"}
            chunks = _chunks(split, mods, names, index, row_group_size)
            paths[split] = write_site_table_batches(
                stage / f"{split}.parquet",
                reported(chunks, step, f"reading {split}", done), meta,
                row_group_size=row_group_size)
            done += len(names)
    return final_paths(paths, stage, out_dir)
