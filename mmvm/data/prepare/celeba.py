"""Bimodal CelebA (image, attributes) -> site Parquet.

Published layout (CelebA "Align&Cropped" release)::

    <src>/img_align_celeba/000001.jpg ...      178x218 RGB
    <src>/list_attr_celeba.txt                 line 1: count; line 2: the 40 names;
                                               then "<file> <40 values of 1/-1>"
    <src>/list_eval_partition.txt              "<file> <0 train | 1 val | 2 test>"

Modalities:

- ``image``: uint8 ``[3, size, size]`` (scale 255): central ``crop x crop`` square
  (default 148, the common choice for aligned CelebA), resized to ``size``;
- ``attributes``: float32 ``[40]`` binary vector (1 = attribute present, in the
  file's order, names in the metadata). The authors render the attributes as a
  character string of length 256; the binary vector carries the same information
  and suits a ``vector`` modality (an MLP) directly.

Labels ``label.<attribute lower-case>`` (0/1) for the probes. Output
``<out>/{train,val,test}.parquet``, sample id = the image file stem; each file is
streamed one row group of images at a time.
"""

from __future__ import annotations

import os
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

SPLITS = {0: "train", 1: "val", 2: "test"}


def read_attributes(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Attribute names and file -> int8 [40] in {0, 1}."""
    if not path.is_file():
        raise DataError(f"{path}: missing")
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise DataError(f"{path}: expected a count line and a names line")
    names = lines[1].split()
    out = {}
    for i, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1 or any(v not in ("1", "-1") for v in parts[1:]):
            raise DataError(f"{path}: line {i}: expected '<file>' and {len(names)} "
                            f"values of 1/-1")
        out[parts[0]] = (np.array(parts[1:], dtype=np.int8) > 0).astype(np.int8)
    return names, out


def read_partition(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DataError(f"{path}: missing")
    out = {}
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{path}: line {i}: expected '<file> <0|1|2>'")
        out[parts[0]] = SPLITS[int(parts[1])]
    return out


def _chunks(src: Path, files: list[str], attrs: dict[str, np.ndarray],
            labels: list[str], size: int, crop: int, n: int) -> Iterator[SiteChunk]:
    """``files`` ``n`` at a time, decoded when asked for: ``image`` uint8
    ``[n, 3, size, size]``, ``attributes`` float32 ``[n, 40]`` and the ``labels``
    columns (one per attribute, in order)."""
    for part in batched(files, n):
        img = np.stack([load_image(src / "img_align_celeba" / f, "RGB", size, crop)
                        for f in part])
        a = np.stack([attrs[f] for f in part])
        yield SiteChunk([Path(f).stem for f in part],
                        {"image": img, "attributes": a.astype(np.float32)},
                        {c: a[:, j].astype(np.int64) for j, c in enumerate(labels)})


def prepare_celeba(src: str | os.PathLike, out_dir: str | os.PathLike, *,
                   size: int = 64, crop: int = 148, row_group_size: int = 1024,
                   progress: Progress | None = None) -> dict[str, Path]:
    """Write ``train/val/test.parquet`` with modalities ``image`` and ``attributes``.

    Parameters
    ----------
    src : CelebA root (``img_align_celeba/`` and the two list files).
    out_dir : output folder; written atomically (nothing on error).
    size, crop : output side and the central crop taken before resizing.
    """
    src = Path(src)
    names, attrs = read_attributes(src / "list_attr_celeba.txt")
    part = read_partition(src / "list_eval_partition.txt")
    missing = sorted(set(part) - set(attrs))
    if missing:
        raise DataError(f"{src / 'list_attr_celeba.txt'}: no attributes for "
                        f"{missing[0]} ({len(missing)} files of the partition)")
    label_cols = {f"label.{n.lower()}": n for n in names}
    step = step_fn(progress, len(part))
    done, paths = 0, {}
    with staged_output(out_dir) as stage:
        for split in SPLITS.values():
            files = sorted(f for f, s in part.items() if s == split)
            if not files:
                continue
            meta = {"name": "celeba-bimodal", "source": str(src.resolve()),
                    "split": split, "n": len(files), "attributes": names,
                    "labels": label_cols,
                    "recipe": {"image": f"centre crop {crop}, resize to {size} "
                                        f"(bicubic)",
                               "attributes": "float32 [40], 1 = present (file: 1), "
                                             "0 = absent (file: -1)"},
                    "created_by": "mmvm.data.prepare.celeba"}
            chunks = _chunks(src, files, attrs, list(label_cols), size, crop,
                             row_group_size)
            paths[split] = write_site_table_batches(
                stage / f"{split}.parquet",
                reported(chunks, step, f"reading {split}", done), meta,
                row_group_size=row_group_size)
            done += len(files)
    return final_paths(paths, stage, out_dir)
