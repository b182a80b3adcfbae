"""Posterior tables on the wire: (mu, logvar) per sample, keyed by aligned row.

After alignment every party knows the federation's row order (the sorted union of
sample ids, or of their keyed pseudonyms in secure mode), so a posterior row is named
by its **row index** in that order; sample ids never travel again. A table maps
modality -> :class:`Posteriors` and travels as one Arrow IPC stream, one record
batch per modality (columns ``row`` uint32, ``mu``, ``logvar``; the modality name in
the batch's schema metadata). ``float16`` halves the bytes; values are returned as
float32. Decoding validates everything a peer could get wrong or a corrupted message
could carry and raises :class:`PosteriorError` saying what and from whom; it reads
each batch's header first and refuses compressed buffers and more rows than the
caller allows, so a small hostile blob cannot make it allocate much more than itself.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

MODALITY_KEY = b"mmvm.modality"
ROW = "row"
MAX_NAME = 256  # characters of a modality tag


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
                 sender: str = "peer", max_rows: int | None = None) -> dict[str, Posteriors]:
    """Parse and validate a table made by :func:`encode_table`.

    ``n_rows``: the federation's number of aligned rows (rows must lie below it).
    ``max_rows``: the most rows one modality may carry (default ``n_rows``: rows are
    unique and below it); pass the window's size where it is known. Every batch's
    header is checked before its buffers are read (:func:`_check_headers`), so a
    small blob cannot make the decoder allocate more than the rows the caller allows.
    """
    if not blob:
        return {}
    limit = n_rows if max_rows is None else max_rows
    try:
        _check_headers(blob, sender, limit)
        reader = pa.ipc.open_stream(io.BytesIO(blob))
        out: dict[str, Posteriors] = {}
        while True:
            try:
                batch, meta = reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                break
            name = _modality(meta, sender)
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
    except (pa.ArrowException, OSError, UnicodeDecodeError, ValueError, SystemError,
            struct.error, IndexError) as err:
        raise PosteriorError(f"posterior table from {sender}: corrupted Arrow data "
                             f"({err})") from None
    return out


def _modality(meta: Mapping[bytes, bytes] | None, sender: str) -> str:
    """The modality tag of a batch: UTF-8, 1..MAX_NAME printable characters."""
    raw = (meta or {}).get(MODALITY_KEY)
    if raw is None:
        raise PosteriorError(f"posterior table from {sender}: a batch lacks its "
                             f"modality tag")
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        raise PosteriorError(f"posterior table from {sender}: a batch's modality tag "
                             f"{raw[:40]!r} is not UTF-8") from None
    if not 0 < len(name) <= MAX_NAME or not name.isprintable():
        raise PosteriorError(f"posterior table from {sender}: modality tag "
                             f"{name[:40]!r} ({len(name)} characters) is not a name "
                             f"of 1 to {MAX_NAME} printable characters")
    return name


def _check_headers(blob: bytes, sender: str, max_rows: int | None) -> None:
    """Read only the messages' headers: record batches only, uncompressed (a
    compressed buffer of a few bytes can inflate to gigabytes; :func:`encode_table`
    never compresses), each of at most ``max_rows`` rows."""
    for message in pa.ipc.MessageReader.open_stream(pa.BufferReader(blob)):
        if message.type == "schema":
            continue
        if message.type != "record batch":
            raise PosteriorError(f"posterior table from {sender}: a {message.type} "
                                 f"message; a table holds record batches only")
        rows, compressed, meta = _batch_header(memoryview(message.metadata))
        where = f"posterior table from {sender}"
        if MODALITY_KEY in meta:
            where += f", modality {meta[MODALITY_KEY][:40].decode(errors='replace')!r}"
        if compressed:
            raise PosteriorError(f"{where}: compressed buffers are not accepted")
        if rows < 0:
            raise PosteriorError(f"{where}: a batch header declares {rows} rows")
        if max_rows is not None and rows > max_rows:
            raise PosteriorError(f"{where}: {rows} rows, more than the {max_rows} "
                                 f"expected")


def _batch_header(buf: memoryview) -> tuple[int, bool, dict[bytes, bytes]]:
    """(rows, compressed, custom metadata) of a RecordBatch message's flatbuffer
    (format/Message.fbs: Message{version, header_type, header, bodyLength,
    custom_metadata}, RecordBatch{length, nodes, buffers, compression})."""
    msg = _fb_table(buf, _fb_deref(buf, 0))
    batch = _fb_table(buf, _fb_deref(buf, msg(2)))
    rows = struct.unpack_from("<q", buf, batch(0))[0] if batch(0) is not None else 0
    meta = {}
    if msg(4) is not None:
        vec = _fb_deref(buf, msg(4))
        for j in range(struct.unpack_from("<I", buf, vec)[0]):
            kv = _fb_table(buf, _fb_deref(buf, vec + 4 + 4 * j))
            meta[_fb_bytes(buf, kv(0))] = _fb_bytes(buf, kv(1))
    return rows, batch(3) is not None, meta


def _fb_deref(buf: memoryview, pos: int | None) -> int:
    if pos is None:
        raise ValueError("a required flatbuffer field is missing")
    return pos + struct.unpack_from("<I", buf, pos)[0]


def _fb_table(buf: memoryview, pos: int) -> Callable[[int], int | None]:
    """Field ``i`` -> its position in the flatbuffer table at ``pos``, None if absent."""
    vtable = pos - struct.unpack_from("<i", buf, pos)[0]
    size = struct.unpack_from("<H", buf, vtable)[0]

    def field(i: int) -> int | None:
        at = 4 + 2 * i
        off = struct.unpack_from("<H", buf, vtable + at)[0] if at + 2 <= size else 0
        return pos + off if off else None

    return field


def _fb_bytes(buf: memoryview, pos: int | None) -> bytes:
    if pos is None:
        return b""
    at = _fb_deref(buf, pos)
    n = struct.unpack_from("<I", buf, at)[0]
    return bytes(buf[at + 4:at + 4 + n])


def _parse(batch: pa.RecordBatch, where: str, latent_dim: int | None,
           n_rows: int | None) -> Posteriors:
    if batch.schema.names != [ROW, "mu", "logvar"]:
        raise PosteriorError(f"{where}: columns {batch.schema.names}, expected "
                             f"['{ROW}', 'mu', 'logvar']")
    col = batch.column(0)
    if col.type != pa.uint32() or col.null_count:
        raise PosteriorError(f"{where}: column '{ROW}' must be non-null uint32, got "
                             f"{col.type}" + (" with nulls" if col.null_count else ""))
    rows = col.to_numpy(zero_copy_only=False).astype(np.int64)
    if len(rows) and (rows.min() < 0 or (n_rows is not None and rows.max() >= n_rows)):
        raise PosteriorError(f"{where}: row {int(rows.max() if rows.min() >= 0 else rows.min())}"
                             f" is outside the {n_rows} aligned rows")
    if len(np.unique(rows)) != len(rows):
        raise PosteriorError(f"{where}: duplicate rows")
    arrays = []
    for name in ("mu", "logvar"):
        lists = batch.column(batch.schema.names.index(name))
        if not pa.types.is_fixed_size_list(lists.type) or \
                lists.type.value_type not in (pa.float16(), pa.float32()):
            raise PosteriorError(f"{where}: column '{name}' must be a fixed-size list of "
                                 f"float16 or float32, got {lists.type}")
        d = lists.type.list_size
        if latent_dim is not None and d != latent_dim:
            raise PosteriorError(f"{where}: {name} has {d} dimensions, the model's latent "
                                 f"space has {latent_dim}")
        if arrays and d != arrays[0].shape[1]:
            raise PosteriorError(f"{where}: mu has {arrays[0].shape[1]} dimensions, "
                                 f"logvar {d}")
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
