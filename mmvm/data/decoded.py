"""A site file's tensors decoded once into ``.npy`` files that batches read row by row.

Streaming from Parquet reads whole row groups: a batch of random rows (the shared
permutation every federated site trains in) touches a row group per row, so each step
decompresses most of the file (measured: 1.2 s a batch of 64 at 20,000 rows of
3x64x64, against 1.2 ms in memory; ``benchmarks/streaming_reads.py``). A decoded copy
is read through ``numpy.memmap``: a batch reads its own rows, from the OS page cache
once they were read, and the process holds no more than the batch (the cached pages
are the kernel's to drop), at the cost of the tensors' size on disk.

The copy is one file per held modality, named by the site file's path and kept while
the site file has the inode, size and change and modification times it had before it
was opened (a file rewritten in place or renamed over it is decoded again: ``cp -p``
keeps a modification time, nothing sets a change time); the older copy is then
removed, and so is a copy whose header and size are not whole. It is written (mode
0600, made exclusively) to a temporary name and renamed when complete, after a check
that the folder's disk has room, under a lock, so that two processes never decode one
file at once; a killed decode's temporary file is removed by the next one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmvm.data.store_format import DataError
from mmvm.data.store_limits import fmt_bytes
from mmvm.folder_lock import LockUnsupported, acquire

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


@dataclass(frozen=True)
class Source:
    """What a copy is decoded from: a site file, as it was before it was opened."""

    path: str
    stat: os.stat_result  # taken before the file was opened
    rows: int
    specs: Mapping[str, dict]  # modality -> {"shape", "dtype"}
    offsets: np.ndarray  # row group k holds rows offsets[k]..offsets[k+1]
    read_group: Callable[[int], Mapping[str, np.ndarray]]  # validated tensors of group k


def copies_bytes(folder: str | os.PathLike, path: str | os.PathLike) -> int:
    """Tensor bytes (as :func:`copy_bytes` counts them) of the whole copies of site
    file ``path`` as it is now in ``folder`` (reused by a run: it needs the rest)."""
    from mmvm.data.store import open_parquet, read_layout

    stat = os.stat(path)
    layout = read_layout(open_parquet(path), str(path))
    src = Source(str(path), stat, layout.num_rows, layout.specs, np.zeros(1), None)
    files = [Path(folder) / f"{_stem(path)}-{_safe(m)}-{_tag(src, m)}.npy"
             for m in layout.specs]
    return sum(copy_bytes(layout.num_rows, layout.specs, [m])
               for f, m in zip(files, layout.specs, strict=True)
               if _intact(f, src, m, remove=False))  # (a check writes nothing)


def _stem(path: str | os.PathLike) -> str:
    return hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]


def decoded_arrays(folder: str | os.PathLike, src: Source, names: list[str]
                   ) -> dict[str, np.memmap]:
    """The tensors ``names`` of ``src`` as read-only memmaps in ``folder``, decoded
    there first where no whole copy of the file as it is now is."""
    folder = Path(folder)
    for d in [*reversed(folder.parents), folder]:  # made here: the site's own (0700),
        if not d.exists():                          # as its state folder is
            d.mkdir(mode=0o700, exist_ok=True)
    stem = _stem(src.path)
    files = {m: folder / f"{stem}-{_safe(m)}-{_tag(src, m)}.npy" for m in names}
    if any(not _intact(files[m], src, m) for m in names):
        try:
            fd = acquire(folder / f".{stem}.lock", wait=float("inf"))
        except LockUnsupported:  # (a network file system) one decode at a time is
            fd = None            # then the operator's to keep
        try:
            _remove_killed(folder, stem)
            todo = [m for m in names if not _intact(files[m], src, m)]  # made meanwhile?
            if todo:
                _check_room(folder, src.path, copy_bytes(src.rows, src.specs, todo))
                _decode(src, {m: files[m] for m in todo})
            for m in todo:  # copies of the file as it was before
                for old in folder.glob(f"{stem}-{_safe(m)}-*.npy"):
                    if old != files[m]:
                        old.unlink(missing_ok=True)
        finally:
            if fd is not None:
                os.close(fd)
    return {m: np.load(files[m], mmap_mode="r") for m in names}


def _tag(src: Source, m: str) -> str:
    """The copy's key: per modality (opened with other modalities, it is shared)."""
    st = src.stat
    key = {"path": os.path.abspath(src.path), "inode": st.st_ino, "size": st.st_size,
           "mtime": st.st_mtime_ns, "ctime": st.st_ctime_ns, "rows": src.rows,
           "modality": m, "shape": list(src.specs[m]["shape"]),
           "dtype": str(src.specs[m]["dtype"])}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _intact(path: Path, src: Source, m: str, remove: bool = True) -> bool:
    """Whether ``path`` is a whole copy, read from its header and size (no mapping:
    an address-space limit must not pass for damage); a damaged one is removed."""
    if not path.is_file():
        return False
    shape, dtype = (src.rows, *src.specs[m]["shape"]), np.dtype(src.specs[m]["dtype"])
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as fh:
            read = readers.get(np.lib.format.read_magic(fh))
            ok = read is not None and read(fh) == (shape, False, dtype) and \
                path.stat().st_size == fh.tell() + math.prod(shape) * dtype.itemsize
    except (OSError, ValueError):
        ok = False
    if not ok and remove:
        path.unlink(missing_ok=True)
    return ok


def _safe(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def _remove_killed(folder: Path, stem: str) -> None:
    """Temporary files of decodes whose process is gone (killed: no ``finally``)."""
    for tmp in folder.glob(f".{stem}-*.tmp.npy"):
        pid = tmp.name.split(".")[-3]
        try:
            os.kill(int(pid), 0)
        except (ProcessLookupError, ValueError):
            tmp.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


def _check_room(folder: Path, path: str, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if need + SPARE_BYTES > free:
        raise DataError(f"{path}: its decoded copy for streaming needs {fmt_bytes(need)} "
                        f"in {folder}, which has {fmt_bytes(free)} free (and keeps "
                        f"{fmt_bytes(SPARE_BYTES)} spare); free disk there, or read "
                        f"the file whole (streaming off) on a host with the memory")


def _decode(src: Source, files: Mapping[str, Path]) -> None:
    """Every row group of ``src`` into the ``files`` (modality -> copy), atomically."""
    tmp = {m: f.with_name(f".{f.stem}.{os.getpid()}.tmp.npy") for m, f in files.items()}
    try:
        out = {}
        for m, t in tmp.items():  # the site's data: its own (0600), made here, not found
            os.close(os.open(t, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW,
                             0o600))
            out[m] = np.lib.format.open_memmap(t, mode="w+", dtype=src.specs[m]["dtype"],
                                               shape=(src.rows, *src.specs[m]["shape"]))
        for k in range(len(src.offsets) - 1):
            group = src.read_group(k)
            for m in out:
                out[m][src.offsets[k]:src.offsets[k + 1]] = group[m]
        for m in list(out):
            out[m].flush()
            del out[m]
            os.replace(tmp[m], files[m])
    finally:
        for t in tmp.values():
            with contextlib.suppress(FileNotFoundError):
                t.unlink()
