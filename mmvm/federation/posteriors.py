"""Posterior tables on the wire: (mu, logvar) per sample, keyed by aligned row.

After alignment every party knows the federation's row order (the sorted union of
sample ids, or of their keyed pseudonyms in secure mode), so a posterior row is named
by its **row index** in that order; sample ids never travel again. A table maps
modality -> :class:`Posteriors` and travels as one Arrow IPC stream, one record
batch per modality (columns ``row`` uint32, ``mu``, ``logvar``; the modality name in
the batch's schema metadata). ``float16`` halves the bytes; values are returned as
float32. Decoding validates everything a peer could get wrong or a corrupted message
could carry and raises :class:`PosteriorError` saying what and from whom.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

MODALITY_KEY = b"mmvm.modality"
ROW = "row"


class PosteriorError(ValueError):
    """A posterior table is malformed, corrupted or inconsistent."""


@dataclass
class Posteriors:
    """Posterior parameters of one modality for aligned ``rows`` (row-aligned arrays)."""

    rows: np.ndarray  # int64 [n], rows of the federation's aligned order
    mu: np.ndarray  # [n, D] float32
    logvar: np.ndarray  # [n, D] float32

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int64).reshape(-1)
        n = len(self.rows)
        if self.mu.shape != self.logvar.shape or self.mu.ndim != 2 or self.mu.shape[0] != n:
            raise PosteriorError(f"mu {self.mu.shape} and logvar {self.logvar.shape} "
                                 f"must both be [{n}, D]")

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index: np.ndarray) -> Posteriors:
        """The entries at positions ``index`` (not rows)."""
        return Posteriors(self.rows[index], self.mu[index], self.logvar[index])

    def lookup(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each of ``rows``: whether this table has it, and its position here."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(self.rows):
            return np.zeros(len(rows), dtype=bool), np.zeros(len(rows), dtype=np.int64)
        order = np.argsort(self.rows, kind="stable")
        sorted_rows = self.rows[order]
        at = np.minimum(np.searchsorted(sorted_rows, rows), len(sorted_rows) - 1)
        return sorted_rows[at] == rows, order[at]


def encode_table(table: Mapping[str, Posteriors], float16: bool = False) -> bytes:
    """Serialize a table to Arrow IPC bytes (one record batch per modality)."""
    if not table:
        return b""
    dtype = pa.float16() if float16 else pa.float32()
    np_dtype = np.float16 if float16 else np.float32
    dims = {p.mu.shape[1] for p in table.values()}
    if len(dims) != 1:
        raise PosteriorError(f"modalities disagree on the latent size: {sorted(dims)}")
    d = dims.pop()
    schema = pa.schema([(ROW, pa.uint32()), ("mu", pa.list_(dtype, d)),
                        ("logvar", pa.list_(dtype, d))])
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema) as writer:
        for name, post in table.items():
            cols = [pa.array(post.rows.astype(np.uint32), type=pa.uint32())]
            for arr in (post.mu, post.logvar):
                flat = np.ascontiguousarray(arr, dtype=np_dtype).reshape(-1)
                cols.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, type=dtype), d))
            batch = pa.RecordBatch.from_arrays(cols, schema=schema)
            writer.write_batch(batch, custom_metadata={MODALITY_KEY: name.encode()})
    return sink.getvalue()


def decode_table(blob: bytes, *, latent_dim: int | None = None, n_rows: int | None = None,
                 sender: str = "peer") -> dict[str, Posteriors]:
    """Parse and validate a table made by :func:`encode_table`.

    ``n_rows``: the federation's number of aligned rows (rows must lie below it)."""
    if not blob:
        return {}
    try:
        reader = pa.ipc.open_stream(io.BytesIO(blob))
        out: dict[str, Posteriors] = {}
        while True:
            try:
                batch, meta = reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                break
            name = (meta or {}).get(MODALITY_KEY)
            if name is None:
                raise PosteriorError(f"posterior table from {sender}: a batch lacks its "
                                     f"modality tag")
            name = name.decode()
            if name in out:
                raise PosteriorError(f"posterior table from {sender}: modality {name!r} "
                                     f"appears twice")
            # the IPC reader checks only the message framing: validate the buffers
            # (list sizes, nulls) before reading values, or corrupted bytes can crash
            batch.validate(full=True)
            out[name] = _parse(batch, f"posterior table from {sender}, modality {name!r}",
                               latent_dim, n_rows)
    except PosteriorError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError, ValueError, SystemError) as err:
        raise PosteriorError(f"posterior table from {sender}: corrupted Arrow data "
                             f"({err})") from None
    return out


def _parse(batch: pa.RecordBatch, where: str, latent_dim: int | None,
           n_rows: int | None) -> Posteriors:
    if batch.schema.names != [ROW, "mu", "logvar"]:
        raise PosteriorError(f"{where}: columns {batch.schema.names}, expected "
                             f"['{ROW}', 'mu', 'logvar']")
    col = batch.column(0)
    if not pa.types.is_integer(col.type) or col.null_count:
        raise PosteriorError(f"{where}: the row column must be non-null integers, got "
                             f"{col.type}")
    rows = col.to_numpy(zero_copy_only=False).astype(np.int64)
    if len(rows) and (rows.min() < 0 or (n_rows is not None and rows.max() >= n_rows)):
        raise PosteriorError(f"{where}: row {int(rows.max() if rows.min() >= 0 else rows.min())}"
                             f" is outside the {n_rows} aligned rows")
    if len(np.unique(rows)) != len(rows):
        raise PosteriorError(f"{where}: duplicate rows")
    arrays = []
    for name in ("mu", "logvar"):
        lists = batch.column(batch.schema.names.index(name))
        if not pa.types.is_fixed_size_list(lists.type) or not pa.types.is_floating(
                lists.type.value_type):
            raise PosteriorError(f"{where}: {name} must be a fixed-size list of floats")
        d = lists.type.list_size
        if latent_dim is not None and d != latent_dim:
            raise PosteriorError(f"{where}: {name} has {d} dimensions, the model's latent "
                                 f"space has {latent_dim}")
        if lists.null_count or lists.flatten().null_count:
            raise PosteriorError(f"{where}: null values in {name}")
        arr = lists.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        arr = arr.reshape(len(rows), d)
        bad = ~np.isfinite(arr).all(1)
        if bad.any():
            raise PosteriorError(f"{where}: NaN or inf in {name} of row "
                                 f"{int(rows[int(np.argmax(bad))])}")
        arrays.append(arr)
    return Posteriors(rows, arrays[0], arrays[1])


def merge_tables(tables: Sequence[Mapping[str, Posteriors]]) -> dict[str, Posteriors]:
    """Union of tables from several sites; a modality held by several sites (different
    samples) is concatenated; the same (modality, row) twice is an error."""
    parts: dict[str, list[Posteriors]] = {}
    for t in tables:
        for name, p in t.items():
            parts.setdefault(name, []).append(p)
    out = {}
    for name, ps in parts.items():
        rows = np.concatenate([p.rows for p in ps])
        uniq, counts = np.unique(rows, return_counts=True)
        if (counts > 1).any():
            raise PosteriorError(f"modality {name!r}: row {int(uniq[counts > 1][0])} "
                                 f"reported by two sites")
        out[name] = ps[0] if len(ps) == 1 else Posteriors(
            rows, np.concatenate([p.mu for p in ps]), np.concatenate([p.logvar for p in ps]))
    return out


def select_rows(table: Mapping[str, Posteriors], wanted: np.ndarray,
                exclude: Sequence[str] = ()) -> dict[str, Posteriors]:
    """The part of ``table`` for the ``wanted`` rows, without modalities ``exclude``."""
    out = {}
    for name, p in table.items():
        if name in exclude:
            continue
        keep = np.flatnonzero(np.isin(p.rows, wanted))
        if len(keep):
            out[name] = p.take(keep)
    return out


def table_state(table: Mapping[str, Posteriors]) -> dict:
    """A posterior table as tensors (``torch.load(weights_only=True)`` reads it back)."""
    import torch

    return {m: {"rows": torch.from_numpy(p.rows.copy()), "mu": torch.from_numpy(p.mu.copy()),
                "logvar": torch.from_numpy(p.logvar.copy())} for m, p in table.items()}


def table_from_state(state: Mapping) -> dict[str, Posteriors]:
    return {m: Posteriors(s["rows"].numpy(), s["mu"].numpy(), s["logvar"].numpy())
            for m, s in state.items()}
