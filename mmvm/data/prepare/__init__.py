"""Preparers: published dataset layouts -> site Parquet files (docs/design.md).

One module per dataset, each with ``prepare_<name>(src, out_dir, ...) -> dict[str,
Path]``:

- ``polymnist_png``: ``<src>/{train,test}/m<k>/<i>.<digit>.png`` ->
  ``{train,test}.parquet``;
- ``mimic_cxr``: MIMIC-CXR-JPG ``files/`` + metadata and CheXpert CSVs ->
  ``{frontal,lateral}/{train,val,test}.parquet``;
- ``hippocampus``: ``<src>/<rat>/<rat>_spike_data_binned.npy`` and
  ``<rat>_trial_info.npy`` -> ``{train,test}.parquet``;
- ``celeba``: ``img_align_celeba/`` + attribute and partition lists ->
  ``{train,val,test}.parquet``;
- ``cub``: ``images/``, ``text/``, ``images.txt``, ``train_test_split.txt`` ->
  ``{train,test}.parquet``;
- ``arrays``: a user's own ``.npy`` per modality, sample ids and labels ->
  ``{train,test}.parquet``, split by sample id (``prepare_arrays(out_dir,
  modalities, ...)``: no published layout, so not in :data:`PREPARERS`).

The image preparers stream: they decode one row group of images at a time
(:func:`batched`) and hand it to :func:`mmvm.data.store.write_site_table_batches`,
so memory holds about one row group, never a whole split (the hippocampus data are
small and written at once). Every preparer writes into a staging directory next to
``out_dir`` and moves the finished files into place only when all of them were
written (:func:`staged_output`), so an error (a missing file, a corrupt image)
leaves no partial output.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

PREPARERS = ("polymnist_png", "mimic_cxr", "hippocampus", "celeba", "cub")

Progress = Callable[[str, int, int], None]  # (description, step, total)
T = TypeVar("T")


def get_preparer(name: str) -> Callable[..., dict[str, Path]]:
    """``prepare_<name>`` of ``mmvm.data.prepare.<name>``; unknown names list all."""
    if name not in PREPARERS:
        raise ValueError(f"unknown preparer {name!r}; choose one of {list(PREPARERS)}")
    module = importlib.import_module(f"mmvm.data.prepare.{name}")
    return getattr(module, f"prepare_{name}")


@contextmanager
def staged_output(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging directory; on success move its files under ``out_dir``.

    The staging directory lives next to ``out_dir`` (same file system, so every move
    is an atomic ``os.replace``) and is removed whatever happens. On an exception
    nothing is moved: ``out_dir`` keeps its previous content, or is not created.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.",
                                  suffix=".tmp"))
    try:
        yield stage
        files = sorted(p for p in stage.rglob("*") if p.is_file())
        for f in files:
            target = out / f.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def final_paths(paths: dict[str, Path], stage: Path, out_dir: str | os.PathLike) \
        -> dict[str, Path]:
    """Map paths written under ``stage`` to where :func:`staged_output` moves them."""
    return {k: Path(out_dir) / Path(p).relative_to(stage) for k, p in paths.items()}


def step_fn(progress: Progress | None, total: int) -> Callable[[str, int], None]:
    """``step(description, i)`` calling ``progress(description, i, total)`` if given."""
    if progress is None:
        return lambda d, i: None
    return lambda d, i: progress(d, i, total)


def batched(items: Sequence, n: int) -> Iterator[Sequence]:
    """Consecutive slices of ``items`` of ``n`` (at least 1) elements, the last shorter."""
    n = max(1, int(n))
    for lo in range(0, len(items), n):
        yield items[lo:lo + n]


def reported(chunks: Iterable[T], step: Callable[[str, int], None], description: str,
             done: int) -> Iterator[T]:
    """Pass ``chunks`` (each with ``sample_ids``) through; after each one is consumed
    call ``step(description, done + rows so far)``."""
    for chunk in chunks:
        yield chunk
        done += len(chunk.sample_ids)
        step(description, done)


def renamed(err: Exception, said: dict[str, str]) -> Exception:
    """``err`` again with the temporary files a preparer made named as the user's
    inputs they came from (``said``: temporary path -> what to call it)."""
    text = str(err)
    for temp, where in said.items():
        text = text.replace(temp, where)
    return type(err)(text)
