"""``.npy`` inputs of the preparers, read without unpickling: the header's dtype is
checked before :func:`numpy.load` reads any value."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmvm.data.store import DataError

_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}


def load_npy(path: Path, mmap: bool = False, what: str = "numbers") -> np.ndarray:
    """A ``.npy`` array (memory-mapped with ``mmap``), or :class:`DataError` saying
    what the file is instead: a table, an object array (pickled values), no NumPy
    file at all; ``what`` names its contents in the message."""
    if path.suffix != ".npy":
        raise DataError(f"{path}: expected a NumPy .npy file" + (
            " (a table: mmvm data prepare table --modality NAME=FILE --id-column COLUMN)"
            if path.suffix in (".csv", ".tsv", ".parquet") else ""))
    dtype = header_dtype(path)
    if dtype is not None and dtype.hasobject:  # e.g. from pandas: values are pickled
        raise DataError(f"{path}: an object array (dtype {dtype}); save {what} with a plain "
                        f"dtype (e.g. np.save(path, values.astype(str)))")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npy array ({e})") from None


def header_dtype(path: Path) -> np.dtype | None:
    """The dtype a ``.npy`` header declares (``None`` for a format version without a
    public reader: :func:`numpy.load` checks those); :class:`DataError` when the file
    has no NumPy header (a text or pickle file named ``.npy``)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = _HEADERS.get(version)
            return None if read is None else read(f)[2]
    except OSError as e:
        raise DataError(f"{path}: not readable ({e})") from None
    except ValueError as e:
        raise DataError(f"{path}: not a NumPy .npy file ({e}); save arrays with "
                        f"np.save(path, array)") from None
