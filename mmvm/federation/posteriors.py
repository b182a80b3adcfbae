"""Posterior tables on the wire: (mu, logvar) per sample, keyed by ``sample_id``.

A table maps modality -> :class:`Posteriors` and travels as one Arrow IPC stream, one
record batch per modality (columns ``sample_id``, ``mu``, ``logvar``; the modality
name in the batch's schema metadata). ``float16`` halves the bytes; values are
returned as float32. Decoding validates everything a peer could get wrong or a
corrupted message could carry and raises :class:`PosteriorError` saying what and where.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

MODALITY_KEY = b"mmvm.modality"


class PosteriorError(ValueError):
    """A posterior table is malformed, corrupted or inconsistent."""


@dataclass
class Posteriors:
    """Posterior parameters of one modality for ``sample_ids`` (row-aligned)."""

    sample_ids: list[str]
    mu: np.ndarray  # [n, D] float32
    logvar: np.ndarray  # [n, D] float32

    def __post_init__(self) -> None:
        n = len(self.sample_ids)
        if self.mu.shape != self.logvar.shape or self.mu.ndim != 2 or self.mu.shape[0] != n:
            raise PosteriorError(f"mu {self.mu.shape} and logvar {self.logvar.shape} "
                                 f"must both be [{n}, D]")


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
    schema = pa.schema([("sample_id", pa.string()), ("mu", pa.list_(dtype, d)),
                        ("logvar", pa.list_(dtype, d))])
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema) as writer:
        for name, post in table.items():
            cols = [pa.array(post.sample_ids, type=pa.string())]
            for arr in (post.mu, post.logvar):
                flat = np.ascontiguousarray(arr, dtype=np_dtype).reshape(-1)
                cols.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, type=dtype), d))
            batch = pa.RecordBatch.from_arrays(cols, schema=schema)
            writer.write_batch(batch, custom_metadata={MODALITY_KEY: name.encode()})
    return sink.getvalue()


def decode_table(blob: bytes, *, latent_dim: int | None = None,
                 sender: str = "peer") -> dict[str, Posteriors]:
    """Parse and validate a table made by :func:`encode_table`."""
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
            # (string offsets, list sizes) before reading values, or corrupted bytes
            # can crash the process
            batch.validate(full=True)
            out[name] = _parse(batch, name, latent_dim, sender)
    except PosteriorError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError, ValueError, SystemError) as err:
        raise PosteriorError(f"posterior table from {sender}: corrupted Arrow data "
                             f"({err})") from None
    return out


def _parse(batch: pa.RecordBatch, name: str, latent_dim: int | None,
           sender: str) -> Posteriors:
    where = f"posterior table from {sender}, modality {name!r}"
    if batch.schema.names != ["sample_id", "mu", "logvar"]:
        raise PosteriorError(f"{where}: columns {batch.schema.names}, expected "
                             f"['sample_id', 'mu', 'logvar']")
    ids = batch.column(0).to_pylist()
    if any(s is None or s == "" for s in ids):
        raise PosteriorError(f"{where}: null or empty sample id")
    if len(set(ids)) != len(ids):
        raise PosteriorError(f"{where}: duplicate sample ids")
    arrays = []
    for col in ("mu", "logvar"):
        lists = batch.column(batch.schema.names.index(col))
        if not pa.types.is_fixed_size_list(lists.type):
            raise PosteriorError(f"{where}: {col} must be a fixed-size list column")
        d = lists.type.list_size
        if latent_dim is not None and d != latent_dim:
            raise PosteriorError(f"{where}: {col} has {d} dimensions, the model's latent "
                                 f"space has {latent_dim}")
        if lists.null_count or lists.flatten().null_count:
            raise PosteriorError(f"{where}: null values in {col}")
        arr = lists.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        arr = arr.reshape(len(ids), d)
        bad = ~np.isfinite(arr).all(1)
        if bad.any():
            raise PosteriorError(f"{where}: NaN or inf in {col} of sample "
                                 f"{ids[int(np.argmax(bad))]!r}")
        arrays.append(arr)
    return Posteriors(ids, arrays[0], arrays[1])


def merge_tables(tables: Sequence[Mapping[str, Posteriors]]) -> dict[str, Posteriors]:
    """Union of tables from several sites; a modality held by several sites (different
    samples) is concatenated; the same (modality, sample) twice is an error."""
    out: dict[str, Posteriors] = {}
    for t in tables:
        for name, p in t.items():
            if name not in out:
                out[name] = p
                continue
            q = out[name]
            dup = set(q.sample_ids) & set(p.sample_ids)
            if dup:
                raise PosteriorError(f"modality {name!r}: sample {sorted(dup)[0]!r} "
                                     f"reported by two sites")
            out[name] = Posteriors(q.sample_ids + p.sample_ids, np.concatenate([q.mu, p.mu]),
                                   np.concatenate([q.logvar, p.logvar]))
    return out


def select_rows(table: Mapping[str, Posteriors], wanted: set[str],
                exclude: Sequence[str] = ()) -> dict[str, Posteriors]:
    """The part of ``table`` for ``wanted`` sample ids, without modalities ``exclude``."""
    out = {}
    for name, p in table.items():
        if name in exclude:
            continue
        keep = [i for i, s in enumerate(p.sample_ids) if s in wanted]
        if keep:
            out[name] = Posteriors([p.sample_ids[i] for i in keep], p.mu[keep], p.logvar[keep])
    return out
