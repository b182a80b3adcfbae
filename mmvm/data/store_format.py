"""The site format's names, limits and the checks shared by its writer and its readers.

:mod:`mmvm.data.store` documents the format and re-exports everything here; the
writer (:mod:`mmvm.data.store_write`) and the readers (:mod:`mmvm.data.store`,
:mod:`mmvm.data.streaming`, :mod:`mmvm.data.labels`) apply the same checks, so a
file that one side accepts the other accepts too, and both name the file, the column
and the row. The limits are documented in ``docs/data-limits.md``.
"""

from __future__ import annotations

import json
import math
import sys
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SAMPLE_ID = "sample_id"
GROUP_COLUMN = "group"  # carried: the trial or patient a sample belongs to (prepare --groups)
TENSOR_KEY = "mmvm.tensor."
DATASET_KEY = "mmvm.dataset"
LATENTS_KEY = "mmvm.latents"  # an `mmvm encode` output's metadata (mmvm.latents)
LABEL = "label"
DTYPES = {"uint8": pa.uint8(), "float32": pa.float32()}
DEFAULT_SCALE = {"uint8": 255.0, "float32": 1.0}

MAX_ID_CHARS = 256  # a sample id: 1..256 characters (at most 1 KiB of UTF-8)
MAX_DIMS = 8  # dimensions of one sample's tensor
MAX_TENSOR_VALUES = 2 ** 28  # values of one sample's tensor (256 MiB of uint8)
SCALE_RANGE = (1e-6, 1e9)  # a tensor's scale (the model's input is value / scale)
LABEL_MAX = 2 ** 31 - 1  # labels are class ids 0..LABEL_MAX; -1 or null = unknown
MAX_CELL_BYTES = 64 << 10  # a string or binary value of a carried (other) column
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model's input is float32


class DataError(ValueError):
    """Invalid site data; the message names file, column and row where known."""


def is_label_column(name: str) -> bool:
    return name == LABEL or name.startswith(LABEL + ".")


def check_column_name(name: str, path: str) -> None:
    """Raise :class:`DataError` unless ``name`` is a usable non-id column name."""
    if not isinstance(name, str) or not name or name == SAMPLE_ID:
        raise DataError(f"{path}: invalid column name {name!r}")


def show(text: str, keep: int = 40) -> str:
    """``repr(text)``, cut to ``keep`` characters, for messages about hostile text."""
    if len(text) <= keep:
        return repr(text)
    return f"{text[:keep]!r}... ({len(text)} characters)"


def cut(text: str, keep: int = 80) -> str:
    """``text`` cut to ``keep`` characters (for values echoed in messages)."""
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text)} characters)"


def id_problem(sid: str) -> str | None:
    """Why ``sid`` is not a valid sample id, or None (rules: docs/data-limits.md)."""
    if len(sid) > MAX_ID_CHARS:
        return f"longer than {MAX_ID_CHARS} characters"
    if sid.isascii() and sid.isprintable() and sid.strip(" ") == sid:
        return None  # the usual case, checked fast: ASCII is always NFC
    if not sid.isprintable():
        bad = next(c for c in sid if not c.isprintable())
        return f"holds the non-printable character U+{ord(bad):04X}"
    if sid.strip(" ") != sid:
        return "starts or ends with a space"
    if unicodedata.normalize("NFC", sid) != sid:
        return "is not in Unicode NFC form (normalise it with unicodedata.normalize)"
    return None


def check_ids(ids: list, path: str, start: int, seen: dict[str, int]) -> None:
    """Raise :class:`DataError` on a null, empty, malformed (:func:`id_problem`) or
    repeated id among rows ``start..``.

    ``seen`` (id -> row, ids of earlier batches of the file) is updated in place.
    """
    for i, sid in enumerate(ids):
        row = start + i
        if sid is None or sid == "":
            raise DataError(f"{path}: column '{SAMPLE_ID}', row {row}: "
                            f"{'null' if sid is None else 'empty'} sample id")
        if not isinstance(sid, str):
            raise DataError(f"{path}: column '{SAMPLE_ID}', row {row}: sample id "
                            f"{cut(repr(sid))} is not a string")
        problem = id_problem(sid)
        if problem:
            raise DataError(f"{path}: column '{SAMPLE_ID}', row {row}: sample id "
                            f"{show(sid)} {problem}")
        first = seen.setdefault(sid, row)
        if first != row:
            raise DataError(f"{path}: column '{SAMPLE_ID}': duplicate sample id "
                            f"'{sid}' in rows {first} and {row}")


def check_scale(scale: object, col: str) -> float:
    """``scale`` as a float; :class:`DataError` (``col`` names the column) unless it
    is a finite, normal number within :data:`SCALE_RANGE`: an infinite, subnormal or
    absurd scale silently turns every input into 0 or inf."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)):
        raise DataError(f"{col}: scale must be a number, got {cut(repr(scale))}")
    value = float(scale)
    lo, hi = SCALE_RANGE
    if not math.isfinite(value) or not value > 0 or value < sys.float_info.min:
        raise DataError(f"{col}: scale must be a finite number > 0 (not subnormal), "
                        f"got {value!r}")
    if not lo <= value <= hi:
        raise DataError(f"{col}: scale {value!r} is outside [{lo:g}, {hi:g}]")
    return value


def tensor_spec(field: pa.Field, text: str, path: str) -> dict:
    """Validate a tensor column's metadata JSON ``text`` against its Arrow ``field``.

    Shapes are checked in Python integers (no int64 wrap-around): 1..:data:`MAX_DIMS`
    positive dimensions whose product equals the stored list size and is at most
    :data:`MAX_TENSOR_VALUES`."""
    col = f"{path}: column '{field.name}'"
    try:
        info = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise DataError(f"{col}: bad tensor metadata {show(text, 200)} ({e!r})") from None
    if not isinstance(info, dict) or "shape" not in info or "dtype" not in info:
        raise DataError(f"{col}: bad tensor metadata {show(text, 200)} (expected an "
                        f'object {{"shape": [...], "dtype": ..., "scale": ...}})')
    shape, dtype = info["shape"], info["dtype"]
    if dtype not in DTYPES:
        raise DataError(f"{col}: metadata dtype {cut(repr(dtype))} not allowed "
                        f"(allowed: {sorted(DTYPES)})")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= MAX_DIMS
            or any(type(s) is not int or s <= 0 for s in shape)):
        raise DataError(f"{col}: metadata shape {cut(repr(shape))} must be a list "
                        f"of 1 to {MAX_DIMS} positive integers")
    if not pa.types.is_fixed_size_list(field.type):
        raise DataError(f"{col}: expected fixed_size_list<{dtype}>, got {field.type}")
    if field.type.value_type != DTYPES[dtype]:
        raise DataError(f"{col}: stored dtype {field.type.value_type} does not match "
                        f"metadata dtype {dtype}")
    size = math.prod(shape)
    if field.type.list_size != size:
        raise DataError(f"{col}: list size {field.type.list_size} does not match metadata "
                        f"shape {shape} ({size} values)")
    if size > MAX_TENSOR_VALUES:
        raise DataError(f"{col}: shape {shape} holds {size} values per sample, more than "
                        f"the limit of {MAX_TENSOR_VALUES}")
    scale = check_scale(info.get("scale", DEFAULT_SCALE[dtype]), col)
    return {"shape": tuple(shape), "dtype": dtype, "scale": scale}


def check_labels(values: np.ndarray, name: str, path: str, ids: list,
                 start: int) -> np.ndarray:
    """Integer labels (nulls already -1) as int64; :class:`DataError` naming the row
    and id of a value outside ``-1..LABEL_MAX``, which would otherwise wrap or read as
    unknown."""
    values = np.asarray(values)
    bad = (values < -1) | (values > LABEL_MAX)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path}: column '{name}', row {start + i} (id '{ids[i]}'): "
                        f"label {int(values[i])} is outside -1..{LABEL_MAX} (class ids "
                        f">= 0; -1 or null mean unknown)")
    return values.astype(np.int64)


def label_values(col: pa.Array | pa.ChunkedArray, name: str, path: str, ids: list,
                 start: int) -> np.ndarray:
    """An integer label column of rows ``start..`` as checked int64, null -> -1 (the
    range is checked in the stored type, so a uint64 cannot wrap into -1)."""
    values = col.fill_null(0).to_numpy(zero_copy_only=False) if col.null_count \
        else col.to_numpy(zero_copy_only=False)
    out = check_labels(values, name, path, ids, start)
    if col.null_count:
        out[np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = -1
    return out


def check_carried(col: pa.Array | pa.ChunkedArray, name: str, path: str, ids: list,
                  start: int) -> None:
    """A carried column holds one flat value per row, strings and binaries of at most
    :data:`MAX_CELL_BYTES`; :class:`DataError` names the first row that does not."""
    if pa.types.is_nested(col.type):
        raise DataError(f"{path}: column '{name}': a carried column must hold one value "
                        f"per row, got {col.type}")
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
            or pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        return
    size = pc.binary_length(col).fill_null(0).to_numpy(zero_copy_only=False)
    if len(size) and size.max() > MAX_CELL_BYTES:
        i = int(np.argmax(size))
        raise DataError(f"{path}: column '{name}', row {start + i} (id '{ids[i]}'): a "
                        f"value of {int(size[i])} bytes, more than {MAX_CELL_BYTES}")


def check_finite(arr: np.ndarray, name: str, path: str, ids: list, start: int,
                 scale: float = 1.0) -> None:
    """Raise :class:`DataError` naming the first row ``start + i`` of a float ``arr``
    (``[n, ...]``, ids ``ids``) holding a NaN or an inf, or a value that overflows
    float32 once divided by ``scale`` (the model's input; only a scale below 1 can);
    other dtypes pass."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    rows = arr.reshape(len(arr), -1)
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path}: column '{name}', row {start + i} (id '{ids[i]}'): "
                        f"NaN or inf in a float tensor")
    if scale >= 1:
        return
    limit = FLOAT32_MAX * scale  # |value| beyond it is inf once divided by scale
    big = (np.abs(rows) > limit).any(axis=1)
    if big.any():
        i = int(np.argmax(big))
        value = float(rows[i][np.argmax(np.abs(rows[i]))])
        raise DataError(f"{path}: column '{name}', row {start + i} (id '{ids[i]}'): "
                        f"value {value:.6g} divided by the column's scale {scale:g} "
                        f"overflows float32 (the model's input is value / scale, at most "
                        f"{FLOAT32_MAX:.4g}): write the column with a larger scale")
