"""The site format's names and the checks shared by its writer and its readers.

:mod:`mmvm.data.store` documents the format and re-exports everything here; the
writer (:mod:`mmvm.data.store_write`) and the readers (:mod:`mmvm.data.store`,
:mod:`mmvm.data.streaming`) apply the same row checks, so a file that one side
accepts the other accepts too, and both name the file, the column and the row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

SAMPLE_ID = "sample_id"
TENSOR_KEY = "mmvm.tensor."
DATASET_KEY = "mmvm.dataset"
LABEL = "label"
DTYPES = {"uint8": pa.uint8(), "float32": pa.float32()}
DEFAULT_SCALE = {"uint8": 255.0, "float32": 1.0}


class DataError(ValueError):
    """Invalid site data; the message names file, column and row where known."""


def is_label_column(name: str) -> bool:
    return name == LABEL or name.startswith(LABEL + ".")


def check_column_name(name: str, path: str) -> None:
    """Raise :class:`DataError` unless ``name`` is a usable non-id column name."""
    if not isinstance(name, str) or not name or name == SAMPLE_ID:
        raise DataError(f"{path}: invalid column name {name!r}")


def check_ids(ids: list, path: str, start: int, seen: dict[str, int]) -> None:
    """Raise :class:`DataError` on a null, empty or repeated id among rows ``start..``.

    ``seen`` (id -> row, ids of earlier batches of the file) is updated in place.
    """
    for i, sid in enumerate(ids):
        row = start + i
        if sid is None or sid == "":
            raise DataError(f"{path}: column '{SAMPLE_ID}', row {row}: "
                            f"{'null' if sid is None else 'empty'} sample id")
        first = seen.setdefault(sid, row)
        if first != row:
            raise DataError(f"{path}: column '{SAMPLE_ID}': duplicate sample id "
                            f"'{sid}' in rows {first} and {row}")


def check_finite(arr: np.ndarray, name: str, path: str, ids: list, start: int) -> None:
    """Raise :class:`DataError` naming the first row ``start + i`` of a float ``arr``
    (``[n, ...]``, ids ``ids``) holding a NaN or an inf; other dtypes pass."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path}: column '{name}', row {start + i} (id '{ids[i]}'): "
                        f"NaN or inf in a float tensor")
