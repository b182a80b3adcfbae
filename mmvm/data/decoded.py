"""A site file's tensors decoded once into ``.npy`` files that batches read row by row.

Streaming from Parquet reads whole row groups: a batch of random rows (the shared
permutation every federated site trains in) touches a row group per row, so each step
decompresses most of the file (measured: 1.2 s a batch of 64 at 20,000 rows of
3x64x64, against 1.2 ms in memory; ``benchmarks/streaming_reads.py``). A decoded copy
is read through ``numpy.memmap``: a batch reads its own rows, from the OS page cache
once they were read, and the process holds no more than the batch (the cached pages
are the kernel's to drop), at the cost of the tensors' size on disk.

The copy is one file per held modality, named by the site file's path and kept while
the site file has the size and modification time it was decoded from; a changed file
is decoded again and the older copy removed, and so is a copy that is not whole (a
truncated file). It is written (mode 0600) to a temporary name and renamed when
complete, after a check that the folder's disk has room: an interrupted or refused
decode leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from mmvm.data.store_format import DataError
from mmvm.data.store_limits import fmt_bytes

SPARE_BYTES = 1 << 30  # free disk the copy leaves (the state, logs, the OS)


def copy_bytes(rows: int, specs: Mapping[str, dict], names: list[str]) -> int:
    """Bytes of the decoded copy of ``rows`` rows of the tensors ``names``."""
    return sum(rows * math.prod(specs[m]["shape"]) * np.dtype(specs[m]["dtype"]).itemsize
               for m in names)


def tensor_bytes(path: str | os.PathLike) -> int:
    """Bytes of every tensor of site file ``path`` decoded (stored dtypes): what a
    whole read holds, and the decoded copy's size; from its metadata alone."""
    from mmvm.data.store import open_parquet, read_layout

    layout = read_layout(open_parquet(path), str(path))
    return copy_bytes(layout.num_rows, layout.specs, list(layout.specs))


def decoded_arrays(folder: str | os.PathLike, path: str, rows: int,
                   specs: Mapping[str, dict], names: list[str], groups: int,
                   read_group: Callable[[int], Mapping[str, np.ndarray]],
                   offsets: np.ndarray) -> dict[str, np.memmap]:
    """The tensors ``names`` of site file ``path`` as read-only memmaps in ``folder``,
    decoded there first where no current copy is (``read_group(k)``: row group ``k``'s
    validated tensors, which start at row ``offsets[k]``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    stat = os.stat(path)
    stem = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]

    def tag(m: str) -> str:  # per modality: opened with other modalities, it is shared
        key = {"path": os.path.abspath(path), "size": stat.st_size, "rows": rows,
               "mtime": stat.st_mtime_ns, "modality": m,
               "shape": list(specs[m]["shape"]), "dtype": str(specs[m]["dtype"])}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    files = {m: folder / f"{stem}-{_safe(m)}-{tag(m)}.npy" for m in names}
    todo = [m for m in names if not _intact(files[m], rows, specs[m])]
    if todo:
        _check_room(folder, path, copy_bytes(rows, specs, todo))
        _decode(files, todo, rows, specs, groups, read_group, offsets)
        for m in todo:  # copies of the file as it was before
            for old in folder.glob(f"{stem}-{_safe(m)}-*.npy"):
                if old != files[m]:
                    old.unlink(missing_ok=True)
    return {m: np.load(files[m], mmap_mode="r") for m in names}


def _intact(path: Path, rows: int, spec: Mapping) -> bool:
    """Whether ``path`` is a whole copy (a truncated or damaged one is removed)."""
    if not path.is_file():
        return False
    try:
        arr = np.load(path, mmap_mode="r")
        ok = arr.shape == (rows, *spec["shape"]) and arr.dtype == np.dtype(spec["dtype"])
        del arr
    except (OSError, ValueError):
        ok = False
    if not ok:
        path.unlink(missing_ok=True)
    return ok


def _safe(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def _check_room(folder: Path, path: str, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if need + SPARE_BYTES > free:
        raise DataError(f"{path}: its decoded copy for streaming needs {fmt_bytes(need)} "
                        f"in {folder}, which has {fmt_bytes(free)} free (and keeps "
                        f"{fmt_bytes(SPARE_BYTES)} spare); free disk there, or read "
                        f"the file whole (streaming off) on a host with the memory")


def _decode(files: Mapping[str, Path], todo: list[str], rows: int,
            specs: Mapping[str, dict], groups: int,
            read_group: Callable[[int], Mapping[str, np.ndarray]],
            offsets: np.ndarray) -> None:
    tmp = {m: files[m].with_name(f".{files[m].stem}.{os.getpid()}.tmp.npy") for m in todo}
    try:
        out = {m: np.lib.format.open_memmap(tmp[m], mode="w+", dtype=specs[m]["dtype"],
                                            shape=(rows, *specs[m]["shape"]))
               for m in todo}
        for t in tmp.values():  # the site's data: its own, as its state folder is
            os.chmod(t, 0o600)
        for k in range(groups):
            group = read_group(k)
            for m in todo:
                out[m][offsets[k]:offsets[k + 1]] = group[m]
        for m in todo:
            out[m].flush()
            del out[m]
            os.replace(tmp[m], files[m])
    finally:
        for t in tmp.values():
            with contextlib.suppress(FileNotFoundError):
                t.unlink()
