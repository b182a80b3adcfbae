"""Posterior tables on the wire: (mu, logvar) per sample, keyed by aligned row.

After alignment every party knows the federation's row order (the sorted union of
sample ids, or of their keyed pseudonyms in secure mode), so a posterior row is named
by its **row index** in that order; sample ids never travel again. A table maps
modality -> :class:`Posteriors` and travels as one Arrow IPC stream, one record
batch per modality (columns ``mu``, ``logvar``; the modality name in the batch's
custom metadata), values in float32, float16 or int8 (power-of-two scale per column,
:mod:`mmvm.federation.quantize`); values are returned as float32.

Rows. Mostly both sides know which rows a table can hold: the rows of the window
that the site holds (its **frame**, derived from the deterministic plan). Given a
frame, rows are *implied*: no row column; a batch that covers the whole frame says
nothing more, one that covers part of it carries a bitmap of the frame's rows (1 bit
per row, not a 4-byte row index). Without a frame (or for rows outside it) a uint32
``row`` column names them.

Increments (error feedback, :mod:`mmvm.federation.delta`, ``mmvm.delta``): the
receiver adds them to its own values (``base``) and gets absolute values back.

Decoding validates all a peer could get wrong or a corrupted message carry (values:
within :data:`LIMITS`), raising :class:`PosteriorError` saying what and from whom; it
reads batch headers first and refuses compressed buffers and more rows than the
caller allows: a small hostile blob cannot make it allocate much more than itself."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mmvm.federation.arrow_headers import headers
from mmvm.federation.quantize import EXP_MAX, EXP_MIN, dequantize, quantize
from mmvm.federation.rows import in_sorted

MODALITY_KEY = b"mmvm.modality"
PRESENT_KEY = b"mmvm.present"  # bitmap of the frame's rows in this batch
EXP_KEY = b"mmvm.exp"  # int8: the scales' exponents, mu's D then logvar's D
DELTA_KEY = b"mmvm.delta"  # increments on the receiver's values
ROW = "row"
MAX_NAME = 256  # characters of a modality tag
LIMITS = {"mu": 65504.0, "logvar": 80.0}  # float16's largest; exp(logvar) fits float32
VALUE_TYPES = {"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8()}

# the receiver's current values of a modality for rows (None if it lacks some)
Base = Callable[[str, np.ndarray], "tuple[np.ndarray, np.ndarray] | None"]


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




def encode_table(table: Mapping[str, Posteriors], float16: bool = False, *,
                 int8: bool = False, frame: np.ndarray | None = None,
                 deltas: Mapping[str, Posteriors] | None = None) -> bytes:
    """Serialize a table to Arrow IPC bytes: one record batch per modality, and one
    per modality of ``deltas`` (increments on what the receiver holds).

    ``frame``: the sorted rows both sides know these rows are among; when every
    row lies in it, rows travel implied (no row column). ``int8`` wins over
    ``float16``."""
    parts = [(m, p, False) for m, p in table.items()]
    parts += [(m, p, True) for m, p in (deltas or {}).items()]
    if not parts:
        return b""
    dims = {p.mu.shape[1] for _, p, _ in parts}
    if len(dims) != 1:
        raise PosteriorError(f"modalities disagree on the latent size: {sorted(dims)}")
    d = dims.pop()
    dtype = VALUE_TYPES["int8" if int8 else "float16" if float16 else "float32"]
    if frame is not None and not (np.diff(frame := np.asarray(frame, np.int64)) > 0).all():
        raise PosteriorError("a frame must be sorted rows without repeats")
    implied = frame is not None and all(in_sorted(p.rows, frame).all() for _, p, _ in parts)
    schema = pa.schema(([] if implied else [(ROW, pa.uint32())])
                       + [("mu", pa.list_(dtype, d)), ("logvar", pa.list_(dtype, d))])
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema) as writer:
        for name, post, delta in parts:
            meta = {MODALITY_KEY: name.encode(), **({DELTA_KEY: b"1"} if delta else {})}
            cols = []
            if implied:
                pos = np.searchsorted(frame, post.rows)
                post = post.take(np.argsort(pos, kind="stable"))
                if len(post) != len(frame):
                    present = np.zeros(len(frame), dtype=bool)
                    present[pos] = True
                    meta[PRESENT_KEY] = np.packbits(present, bitorder="little").tobytes()
            else:
                cols.append(pa.array(post.rows.astype(np.uint32), type=pa.uint32()))
            exps = []
            for arr in (post.mu, post.logvar):
                if int8:
                    q, e = quantize(arr)
                    flat, exps = q.reshape(-1), [*exps, e]
                else:
                    flat = np.ascontiguousarray(
                        arr, dtype=np.float16 if float16 else np.float32).reshape(-1)
                cols.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, type=dtype), d))
            if int8:
                meta[EXP_KEY] = np.concatenate(exps).tobytes()
            writer.write_batch(pa.RecordBatch.from_arrays(cols, schema=schema),
                               custom_metadata=meta)
    return sink.getvalue()


def decode_table(blob: bytes, *, latent_dim: int | None = None, n_rows: int | None = None,
                 sender: str = "peer", max_rows: int | None = None,
                 frame: np.ndarray | None = None, base: Base | None = None
                 ) -> dict[str, Posteriors]:
    """Parse and validate a table made by :func:`encode_table`.

    ``n_rows``: the federation's number of aligned rows (rows must lie below it).
    ``max_rows``: the most rows one batch may carry (default ``n_rows``; at most the
    frame's size when a ``frame`` is given); pass the window's size where it is
    known. ``frame``: the sorted rows implied rows stand for (the same the sender
    used). ``base``: the receiver's values, to which increments are added (a table
    with increments and no base, or increments for rows the base lacks, is refused).
    Every batch's header is checked before its buffers are read
    (:func:`_check_headers`), so a small blob cannot make the decoder allocate more
    than the rows the caller allows."""
    if not blob:
        return {}
    limit = n_rows if max_rows is None else max_rows
    if frame is not None:
        frame = np.asarray(frame, dtype=np.int64)
        limit = min(len(frame), len(frame) if limit is None else limit)
    try:
        _check_headers(blob, sender, limit)
        reader = pa.ipc.open_stream(io.BytesIO(blob))
        parts: dict[tuple[str, bool], Posteriors] = {}
        while True:
            try:
                batch, raw_meta = reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                break
            meta = dict(raw_meta.items()) if raw_meta is not None else {}
            name = _modality(meta, sender)
            where = f"posterior table from {sender}, modality {name!r}"
            delta = meta.get(DELTA_KEY)
            if delta not in (None, b"1"):
                raise PosteriorError(f"{where}: increment flag {delta[:20]!r} is not b'1'")
            if (name, delta is not None) in parts:
                raise PosteriorError(f"posterior table from {sender}: modality {name!r} "
                                     f"appears twice" + (" as increments" if delta else ""))
            # the IPC reader checks only the message framing: validate the buffers
            # (list sizes, nulls) before reading values, or corrupted bytes can crash
            batch.validate(full=True)
            parts[(name, delta is not None)] = _parse(batch, meta, where, latent_dim,
                                                      n_rows, frame)
    except PosteriorError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError, ValueError, SystemError,
            struct.error, IndexError) as err:
        raise PosteriorError(f"posterior table from {sender}: corrupted Arrow data "
                             f"({err})") from None
    return _absolute(parts, base, sender)


def _absolute(parts: Mapping[tuple[str, bool], Posteriors], base: Base | None,
              sender: str) -> dict[str, Posteriors]:
    """Per modality: its absolute rows and its incremented rows added to ``base``."""
    out: dict[str, Posteriors] = {}
    for (name, delta), post in parts.items():
        where = f"posterior table from {sender}, modality {name!r}"
        if delta:
            known = base(name, post.rows) if base is not None else None
            if known is None:
                raise PosteriorError(f"{where}: increments for rows the receiver holds "
                                     f"no values of (did it miss a message?)")
            post = Posteriors(post.rows, known[0] + post.mu, known[1] + post.logvar)
            if not ((np.abs(post.mu) <= LIMITS["mu"]).all()
                    and (np.abs(post.logvar) <= LIMITS["logvar"]).all()):
                raise PosteriorError(f"{where}: increments take values beyond {LIMITS}")
        if name in out:
            if np.isin(post.rows, (first := out[name]).rows).any():
                raise PosteriorError(f"{where}: a row both as a value and an increment")
            post = Posteriors(np.concatenate([first.rows, post.rows]),
                              np.concatenate([first.mu, post.mu]),
                              np.concatenate([first.logvar, post.logvar]))
        out[name] = post
    return out


def _modality(meta: Mapping[bytes, bytes], sender: str) -> str:
    """The modality tag of a batch: UTF-8, 1..MAX_NAME printable characters."""
    raw = meta.get(MODALITY_KEY)
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
    for h in headers(blob):
        if h.kind == "schema":
            continue
        if h.kind != "record batch":
            raise PosteriorError(f"posterior table from {sender}: a {h.kind} "
                                 f"message; a table holds record batches only")
        where = f"posterior table from {sender}"
        if MODALITY_KEY in h.meta:
            where += f", modality {h.meta[MODALITY_KEY][:40].decode(errors='replace')!r}"
        if h.compressed:
            raise PosteriorError(f"{where}: compressed buffers are not accepted")
        if h.rows < 0:
            raise PosteriorError(f"{where}: a batch header declares {h.rows} rows")
        if max_rows is not None and h.rows > max_rows:
            raise PosteriorError(f"{where}: {h.rows} rows, more than the {max_rows} "
                                 f"expected")


def _implied_rows(n: int, meta: Mapping[bytes, bytes], frame: np.ndarray | None,
                  where: str) -> np.ndarray:
    """The rows of a batch without a row column: the frame's, or those its bitmap marks."""
    if frame is None:
        raise PosteriorError(f"{where}: rows are implied (no row column) but the "
                             f"receiver knows no window frame to imply them from")
    bits = meta.get(PRESENT_KEY)
    if bits is None:
        if n != len(frame):
            raise PosteriorError(f"{where}: {n} rows without a row column or bitmap; "
                                 f"the window's frame has {len(frame)}")
        return frame.copy()
    if len(bits) != (len(frame) + 7) // 8:
        raise PosteriorError(f"{where}: a bitmap of {len(bits)} bytes for a frame of "
                             f"{len(frame)} rows (expected {(len(frame) + 7) // 8})")
    present = np.unpackbits(np.frombuffer(bits, dtype=np.uint8), bitorder="little")
    if present[len(frame):].any():
        raise PosteriorError(f"{where}: bitmap bits set past the frame's {len(frame)} rows")
    present = present[:len(frame)].astype(bool)
    if int(present.sum()) != n:
        raise PosteriorError(f"{where}: the bitmap marks {int(present.sum())} rows, the "
                             f"batch has {n}")
    return frame[present]


def _explicit_rows(batch: pa.RecordBatch, meta: Mapping[bytes, bytes], where: str,
                   n_rows: int | None) -> np.ndarray:
    if PRESENT_KEY in meta:
        raise PosteriorError(f"{where}: both a row column and a bitmap")
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
    return rows


def _exponents(meta: Mapping[bytes, bytes], d: int, where: str) -> np.ndarray:
    raw = meta.get(EXP_KEY)
    if raw is None or len(raw) != 2 * d:
        raise PosteriorError(f"{where}: int8 values need {2 * d} scale exponents, got "
                             f"{0 if raw is None else len(raw)}")
    e = np.frombuffer(raw, dtype=np.int8)
    if e.min() < EXP_MIN or e.max() > EXP_MAX:
        raise PosteriorError(f"{where}: scale exponent outside [{EXP_MIN}, {EXP_MAX}]")
    return e


def _parse(batch: pa.RecordBatch, meta: Mapping[bytes, bytes], where: str,
           latent_dim: int | None, n_rows: int | None, frame: np.ndarray | None
           ) -> Posteriors:
    names = batch.schema.names
    if names == [ROW, "mu", "logvar"]:
        rows = _explicit_rows(batch, meta, where, n_rows)
    elif names == ["mu", "logvar"]:
        rows = _implied_rows(batch.num_rows, meta, frame, where)
    else:
        raise PosteriorError(f"{where}: columns {names}, expected [{ROW},] mu, logvar")
    arrays = []
    for j, name in enumerate(("mu", "logvar")):
        lists = batch.column(names.index(name))
        if not pa.types.is_fixed_size_list(lists.type) or \
                lists.type.value_type not in VALUE_TYPES.values():
            raise PosteriorError(f"{where}: column '{name}' must be a fixed-size list of "
                                 f"{', '.join(VALUE_TYPES)}, got {lists.type}")
        d = lists.type.list_size
        if latent_dim is not None and d != latent_dim:
            raise PosteriorError(f"{where}: {name} has {d} dimensions, the model's latent "
                                 f"space has {latent_dim}")
        if arrays and d != arrays[0].shape[1]:
            raise PosteriorError(f"{where}: mu has {arrays[0].shape[1]} dimensions, "
                                 f"logvar {d}")
        if lists.null_count or lists.flatten().null_count:
            raise PosteriorError(f"{where}: null values in {name}")
        int8 = lists.type.value_type == pa.int8()
        arr = lists.flatten().to_numpy(zero_copy_only=False).reshape(len(rows), d)
        arr = dequantize(arr, _exponents(meta, d, where)[j * d:(j + 1) * d]) if int8 \
            else arr.astype(np.float32)
        if not int8 and EXP_KEY in meta:
            raise PosteriorError(f"{where}: scale exponents on non-int8 values")
        limit = LIMITS[name] * (2 if DELTA_KEY in meta else 1)  # an increment: a - b
        bad = ~(np.abs(arr) <= limit).all(1)  # NaN compares False
        if bad.any():
            row = int(rows[int(np.argmax(bad))])
            raise PosteriorError(f"{where}: NaN or inf in {name} of row {row} (or a "
                                 f"value beyond +-{limit:g})")
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
    out, wanted = {}, np.sort(wanted)  # already sorted from the server: ~free
    for name, p in table.items():
        if name in exclude:
            continue
        keep = np.flatnonzero(in_sorted(p.rows, wanted))
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
