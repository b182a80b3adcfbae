"""Hostile and broken inputs are refused clearly, in bounded memory (docs/data-limits.md).

Each kind of bad input is built with pyarrow directly (real Parquet files and Arrow IPC
blobs in a temporary folder) and handed to every reader that should refuse it. All
cases run in one subprocess (``hostile_runner.py``) whose address space is limited to
what its imports map plus :data:`HEADROOM` (the imports of torch and pyarrow map about
1-2 GiB; measured, so the limit is relative). A case passes when the reader raises the
expected error type with a message naming the file or sender, the column and the row
or sample id where there is one, or reads the expected number of rows.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmvm.federation.posteriors import MODALITY_KEY, Posteriors, encode_table

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("hostile_runner.py")
HEADROOM = 1 << 30  # the bomb below decodes to 1 GiB: more than the limit leaves
SCHEMA_READERS = ["meta", "table", "stream", "memory", "streaming", "labels", "check"]
ROW_READERS = SCHEMA_READERS[1:]


# ----------------------------------------------------------------------- site files
def _tmeta(shape, dtype="float32", scale=1.0, name="m0") -> dict[bytes, bytes]:
    return {f"mmvm.tensor.{name}".encode():
            json.dumps({"shape": shape, "dtype": dtype, "scale": scale}).encode()}


def _site(path: Path, n: int = 4, *, ids=None, tensor=None, meta=None, labels=None,
          extra: dict | None = None, **write) -> None:
    """A valid site file (``m0`` float32 [2, 3], ``label``) with parts replaced."""
    ids = [f"s{i}" for i in range(n)] if ids is None else ids
    n = len(ids)
    if tensor is None:
        tensor = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(6 * n, np.float32)), 6)
    cols = {"sample_id": pa.array(ids, pa.string()), "m0": tensor,
            "label": labels if labels is not None else pa.array(np.arange(n) % 3)}
    table = pa.table({**cols, **(extra or {})})
    table = table.replace_schema_metadata(_tmeta([2, 3]) if meta is None else meta)
    pq.write_table(table, path, **write)


def _zero_rows(path: Path, groups: int) -> None:
    schema = pa.schema([("sample_id", pa.string()), ("m0", pa.list_(pa.float32(), 6)),
                        ("label", pa.int64())], metadata=_tmeta([2, 3]))
    with pq.ParquetWriter(path, schema) as w:
        if groups:
            w.write_table(schema.empty_table())


def _bomb(path: Path) -> None:
    """256 rows of [1024, 1024] float32 zeros in one row group: 1 GiB decoded from a
    ~60 KB file, its sizes honestly declared (the same chunk repeated, never copied)."""
    rows, per, chunk_rows = 256, 1 << 20, 8
    chunk = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(chunk_rows * per,
                                                                np.float32)), per)
    table = pa.table({"sample_id": pa.array([f"s{i}" for i in range(rows)]),
                      "m0": pa.chunked_array([chunk] * (rows // chunk_rows))})
    table = table.replace_schema_metadata(_tmeta([1024, 1024]))
    pq.write_table(table, path, row_group_size=rows, use_dictionary=False,
                   compression="zstd")


def _meta(**changes) -> Callable[[Path], None]:
    """A file whose ``m0`` tensor metadata JSON has ``changes``."""
    def build(path: Path) -> None:
        info = {"shape": [2, 3], "dtype": "float32", "scale": 1.0, **changes}
        _site(path, meta={b"mmvm.tensor.m0": json.dumps(info).encode()})
    return build


def _raw_meta(extra: dict[bytes, bytes]) -> Callable[[Path], None]:
    return lambda path: _site(path, meta={**_tmeta([2, 3]), **extra})


def _shape(shape: list[int], list_size: int) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        tensor = pa.array([], pa.list_(pa.float32(), list_size))
        _site(path, ids=[], tensor=tensor, labels=pa.array([], pa.int64()),
              meta=_tmeta(shape))
    return build


def _ids(at: int, sid: str, n: int = 4) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        ids = [f"s{i}" for i in range(n)]
        ids[at] = sid
        _site(path, ids=ids)
    return build


def _labels(values, type_) -> Callable[[Path], None]:
    return lambda path: _site(path, labels=pa.array(values, type_))


def _dup_columns(path: Path) -> None:
    t = pa.table([pa.array(["s0"]), pa.array([1]), pa.array([2])],
                 names=["sample_id", "extra", "extra"])
    pq.write_table(t, path)


def _overflow(path: Path) -> None:
    """Finite float32 values, but 3e37 / 1e-6 is inf in float32: training read inf
    inputs and failed naming batch positions, while `data check` called it ok."""
    values = np.ones(4 * 6, np.float32)
    values[2 * 6 + 4] = -3e37
    _site(path, tensor=pa.FixedSizeListArray.from_arrays(pa.array(values), 6),
          meta=_tmeta([2, 3], scale=1e-6))


def _extra(col: pa.Array) -> Callable[[Path], None]:
    return lambda path: _site(path, n=len(col), extra={"extra": col})


FILES: dict[str, tuple[Callable[[Path], None], list[str], list[str] | int]] = {
    # name: (builder, readers, message parts expected (besides the file name) | rows)
    # --- memory and arithmetic bombs
    "shape_overflow": (_shape([2 ** 40, 2 ** 40, 7], 6), SCHEMA_READERS,
                       ["column 'm0'", "list size 6", "shape"]),
    "shape_beyond_int64": (_shape([2 ** 70], 4), SCHEMA_READERS,
                           ["column 'm0'", "list size 4", str(2 ** 70)]),
    "shape_wraps_int64": (_shape([2 ** 62 + 1, 4], 4), SCHEMA_READERS,
                          ["column 'm0'", "list size 4", "18446744073709551620"]),
    "shape_too_many_values": (_shape([2 ** 29], 2 ** 29), SCHEMA_READERS,
                              ["column 'm0'", "more than the limit"]),
    "zstd_bomb_in_memory": (_bomb, ["table", "memory"],
                            ["of memory, more than the", "data.streaming"]),
    "zstd_bomb_streaming": (_bomb, ["streaming"], ["row groups", "cache_row_groups"]),
    "zstd_bomb_streamed": (_bomb, ["stream", "check", "meta"], 256),
    "id_bomb_declared": (_ids(1, "a" * (5 << 20)), SCHEMA_READERS,
                         ["column 'sample_id'", "row group 0 (rows 0..3)"]),
    "id_bomb_row": (_ids(7, "a" * (5 << 20), n=5000), ROW_READERS,
                    ["column 'sample_id'", "row 7", "longer than 256",
                     "(5242880 characters)"]),
    "other_bomb": (_extra(pa.array([b"x" * (20 << 20)] * 2)), SCHEMA_READERS,
                   ["column 'extra'", "row group 0 (rows 0..1)"]),
    # --- metadata that is not what it claims
    "meta_not_utf8": (_raw_meta({b"mmvm.tensor.m0": b"\xff\xfe{"}), SCHEMA_READERS,
                      ["mmvm.tensor.m0", "not UTF-8"]),
    "meta_key_not_utf8": (_raw_meta({b"mmvm.\xff": b"{}"}), SCHEMA_READERS,
                          ["mmvm.", "not UTF-8"]),
    "dataset_list": (_raw_meta({b"mmvm.dataset": b"[1, 2]"}), SCHEMA_READERS,
                     ["mmvm.dataset", "must be a JSON object, got list"]),
    "dataset_deep": (_raw_meta({b"mmvm.dataset": b"[" * 100_000}), SCHEMA_READERS,
                     ["mmvm.dataset", "not JSON"]),
    "tensor_meta_list": (_raw_meta({b"mmvm.tensor.m0": b"[2, 3]"}), SCHEMA_READERS,
                         ["column 'm0'", "bad tensor metadata"]),
    "shape_empty": (_shape([], 1), SCHEMA_READERS, ["column 'm0'", "shape []"]),
    "shape_fraction": (_meta(shape=[2.5, 2.4]), SCHEMA_READERS, ["column 'm0'", "shape"]),
    "scale_inf": (_meta(scale=float("inf")), SCHEMA_READERS, ["column 'm0'", "scale"]),
    "scale_nan": (_meta(scale=float("nan")), SCHEMA_READERS, ["column 'm0'", "scale"]),
    "scale_subnormal": (_meta(scale=1e-310), SCHEMA_READERS,
                        ["column 'm0'", "not subnormal"]),
    "scale_tiny": (_meta(scale=1e-30), SCHEMA_READERS, ["column 'm0'", "outside"]),
    "scale_huge": (_meta(scale=1e300), SCHEMA_READERS, ["column 'm0'", "outside"]),
    "scale_text": (_meta(scale="255"), SCHEMA_READERS, ["column 'm0'", "number"]),
    "scale_bool": (_meta(scale=True), SCHEMA_READERS, ["column 'm0'", "number"]),
    "scale_zero": (_meta(scale=0), SCHEMA_READERS, ["column 'm0'", "> 0"]),
    "value_overflows_scale": (_overflow, ["table", "stream", "memory", "streaming",
                                          "check"],
                              ["column 'm0'", "row 2", "id 's2'", "value -3e+37 divided "
                               "by the column's scale 1e-06 overflows float32",
                               "write the column with a larger scale"]),
    "duplicate_columns": (_dup_columns, SCHEMA_READERS, ["'extra'", "more than once"]),
    "nested_other": (_extra(pa.array([[1, 2], [3]])), SCHEMA_READERS,
                     ["column 'extra'", "one value per row"]),
    "long_other_value": (_extra(pa.array(["x" * 70_000, "y"])),
                         ["table", "stream", "memory", "check"],
                         ["column 'extra'", "row 0", "id 's0'", "70000 bytes"]),
    # --- degenerate files: read as empty; `data check` calls them errors (no samples)
    "zero_rows_no_group": (lambda p: _zero_rows(p, 0), SCHEMA_READERS[:-1], 0),
    "zero_rows_empty_group": (lambda p: _zero_rows(p, 1), SCHEMA_READERS[:-1], 0),
    "zero_rows_checked": (lambda p: _zero_rows(p, 1), ["check"], ["no rows"]),
    # --- labels and ids
    "label_uint64": (_labels([0, 1, 2 ** 63 + 5, 1], pa.uint64()), ROW_READERS,
                     ["column 'label'", "row 2", "id 's2'", "outside -1..2147483647"]),
    "label_negative": (_labels([0, -7, 1, 1], pa.int8()), ROW_READERS,
                       ["column 'label'", "row 1", "id 's1'", "label -7"]),
    "label_huge": (_labels([0, 1, 2, 2 ** 40], pa.int64()), ROW_READERS,
                   ["column 'label'", "row 3", "id 's3'"]),
    "id_257_chars": (_ids(1, "x" * 257), ROW_READERS,
                     ["column 'sample_id'", "row 1", "longer than 256"]),
    "id_all_spaces": (_ids(2, "   "), ROW_READERS,
                      ["column 'sample_id'", "row 2", "starts or ends with a space"]),
    "id_trailing_space": (_ids(0, "s9 "), ROW_READERS,
                          ["column 'sample_id'", "row 0", "'s9 '", "space"]),
    "id_nul": (_ids(3, "s\x00x"), ROW_READERS,
               ["column 'sample_id'", "row 3", "U+0000"]),
    "id_escape": (_ids(1, "\x1b[2Jx"), ROW_READERS,
                  ["column 'sample_id'", "row 1", "U+001B", "\\x1b"]),
    "id_zero_width": (_ids(1, "a\u200bb"), ROW_READERS,
                      ["column 'sample_id'", "row 1", "U+200B"]),
    "id_not_nfc": (_ids(1, "e\u0301"), ROW_READERS,
                   ["column 'sample_id'", "row 1", "NFC"]),
}


# ------------------------------------------------------------------ posterior blobs
def _post(rows, d=4) -> Posteriors:
    rng = np.random.default_rng(0)
    n = len(rows)
    return Posteriors(np.asarray(rows), rng.normal(size=(n, d)).astype(np.float32),
                      rng.normal(size=(n, d)).astype(np.float32))


def _ipc(cols: dict[str, pa.Array], tag: bytes = b"m0", compression=None) -> bytes:
    batch = pa.record_batch(cols)
    sink = io.BytesIO()
    opts = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, batch.schema, options=opts) as w:
        w.write_batch(batch, custom_metadata={MODALITY_KEY: tag})
    return sink.getvalue()


F32 = pa.float32()


def _lists(values: np.ndarray, type_: pa.DataType = F32) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type_),
                                             values.shape[1])


def _cols(rows: pa.Array | None = None, mu=None, logvar=None) -> dict:
    rows = pa.array([0, 1], pa.uint32()) if rows is None else rows
    z = np.zeros((len(rows), 4), np.float32)
    return {"row": rows, "mu": _lists(z) if mu is None else mu,
            "logvar": _lists(z) if logvar is None else logvar}


def _many_rows() -> bytes:
    return encode_table({"m0": _post(np.arange(1_000_000), d=1)})


def _compressed() -> bytes:
    z = np.zeros((100_000, 64), np.float32)
    return _ipc({"row": pa.array(np.arange(100_000, dtype=np.uint32)), "mu": _lists(z),
                 "logvar": _lists(z)}, compression="zstd")


SENDER = {"sender": "site-b", "n_rows": 2_000_000}
BLOBS: dict[str, tuple[Callable[[], bytes], dict, list[str]]] = {
    "post_million_rows": (_many_rows, {**SENDER, "max_rows": 300},
                          ["modality 'm0'", "1000000 rows, more than the 300"]),
    "post_rows_beyond_federation": (_many_rows, {**SENDER, "n_rows": 500},
                                    ["modality 'm0'", "more than the 500"]),
    "post_compressed": (_compressed, {**SENDER, "max_rows": 300},
                        ["modality 'm0'", "compressed"]),
    "post_row_int64": (lambda: _ipc(_cols(rows=pa.array([0, 1], pa.int64()))), SENDER,
                       ["modality 'm0'", "column 'row'", "int64"]),
    "post_row_uint64": (lambda: _ipc(_cols(rows=pa.array([0, 2 ** 63], pa.uint64()))),
                        SENDER, ["modality 'm0'", "column 'row'", "uint64"]),
    "post_row_strings": (lambda: _ipc(_cols(rows=pa.array(["0", "1"]))), SENDER,
                         ["modality 'm0'", "column 'row'", "string"]),
    "post_row_floats": (lambda: _ipc(_cols(rows=pa.array([0.0, 1.0]))), SENDER,
                        ["modality 'm0'", "column 'row'", "double"]),
    "post_mu_float64": (lambda: _ipc(_cols(mu=_lists(np.zeros((2, 4)), pa.float64()))),
                        SENDER, ["modality 'm0'", "column 'mu'", "double"]),
    "post_mu_strings": (lambda: _ipc(_cols(mu=pa.array([["1"] * 4] * 2,
                                                       pa.list_(pa.string(), 4)))),
                        SENDER, ["modality 'm0'", "column 'mu'", "string"]),
    "post_widths_differ": (lambda: _ipc(_cols(logvar=_lists(np.zeros((2, 5),
                                                                     np.float32)))),
                           SENDER, ["modality 'm0'", "mu has 4 dimensions, logvar 5"]),
    "post_tag_not_utf8": (lambda: _ipc(_cols(), tag=b"\xffm0"), SENDER,
                          ["modality tag", "not UTF-8"]),
    "post_tag_huge": (lambda: _ipc(_cols(), tag=b"m" * 100_000), SENDER,
                      ["modality tag", "100000 characters"]),
}


# ----------------------------------------------------------------------- the battery
def _cases(tmp: Path) -> list[dict]:
    cases, built = [], {}
    for name, (build, readers, _) in FILES.items():
        path = built.get(build)
        if path is None:  # the bomb is built once for its three entries
            path = built[build] = tmp / f"{name}.parquet"
            build(path)
        cases += [{"id": f"{name}/{r}", "reader": r, "path": str(path)} for r in readers]
    for name, (build, kwargs, _) in BLOBS.items():
        path = tmp / f"{name}.arrow"
        path.write_bytes(build())
        cases.append({"id": name, "reader": "posterior", "path": str(path),
                      "kwargs": kwargs})
    # `mmvm data check` on every file at once (not the bomb: streamed above), and
    # without files (a usage error)
    files = sorted({c["path"] for c in cases if c["reader"] == "check"
                    and "bomb" not in c["path"]})
    cases.append({"id": "cli/all", "reader": "cli", "paths": files})
    cases.append({"id": "cli/usage", "reader": "cli", "paths": []})
    return cases


@pytest.fixture(scope="module")
def battery(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("hostile")
    spec = tmp / "cases.json"
    spec.write_text(json.dumps(_cases(tmp)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "240",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(RUNNER), str(spec), str(HEADROOM)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["id"]: r for r in json.loads(proc.stdout)}


def _expect(name: str) -> tuple[str, object]:
    if name in BLOBS:
        return "posterior", BLOBS[name][2]
    return FILES[name][0], FILES[name][2]


def _ids_of(table: dict) -> list[tuple[str, str]]:
    return [(name, r) for name, (_, readers, _) in table.items() for r in readers]


@pytest.mark.parametrize("name, reader", _ids_of(FILES),
                         ids=[f"{n}/{r}" for n, r in _ids_of(FILES)])
def test_site_file_refused_or_read(battery, name, reader):
    res = battery[f"{name}/{reader}"]
    expect = FILES[name][2]
    if isinstance(expect, int):
        assert res["status"] == "ok", res
        assert res["value"] == expect
        return
    assert res["status"] == "error", res
    assert res["type"] == ("CheckInvalid" if reader == "check" else "DataError"), res
    msg = res["msg"]
    fname = name if not name.startswith("zstd_bomb") else "zstd_bomb_in_memory"
    assert f"{fname}.parquet" in msg, msg
    for part in expect:
        assert part in msg, (part, msg)
    assert len(msg) < 1500  # a hostile id or value is shown cut, never whole


@pytest.mark.parametrize("name", list(BLOBS))
def test_posterior_blob_refused_naming_sender(battery, name):
    res = battery[name]
    assert res["status"] == "error" and res["type"] == "PosteriorError", res
    assert "posterior table from site-b" in res["msg"], res["msg"]
    for part in BLOBS[name][2]:
        assert part in res["msg"], (part, res["msg"])
    assert len(res["msg"]) < 1500


def test_data_check_reports_every_file_without_traceback(battery):
    res = battery["cli/all"]
    assert res["status"] == "ok", res
    out = res["value"]
    assert out["rc"] == 1
    assert "Traceback" not in out["stdout"] + out["stderr"]
    errors = [line for line in out["stderr"].splitlines() if line.startswith("error: ")]
    bad = {n for n, (_, readers, e) in FILES.items()
           if "check" in readers and not isinstance(e, int) and "bomb" not in n}
    assert len(errors) == len(bad), out["stderr"]
    for n in bad:
        assert any(f"{n}.parquet" in line for line in errors), n
    assert out["stdout"].count("invalid") == len(bad)
    assert " ok " not in out["stdout"]  # a zero-row file is not ok either
    assert "\x1b" not in out["stdout"] + out["stderr"]  # a hostile id cannot drive the tty


def test_data_check_without_files_is_a_usage_error(battery):
    res = battery["cli/usage"]
    assert res["status"] == "ok" and res["value"]["rc"] == 2, res
    assert "Traceback" not in res["value"]["stderr"]


def test_bounded_memory(battery):
    """The 1 GiB bomb was streamed in full (twice) while the process grew by less than
    half of it: the readers decode batch by batch."""
    lim = battery["_limits"]
    assert battery["zstd_bomb_streamed/stream"]["value"] == 256
    assert lim["peak"] - lim["resident"] < HEADROOM // 2, lim


# ------------------------------------------------------------------- the writer too
def _write_args(n: int = 4) -> dict:
    return {"sample_ids": [f"s{i}" for i in range(n)],
            "tensors": {"m0": np.ones((n, 2, 3), np.float32)},
            "labels": {"label": np.arange(n)}, "dataset_meta": {"name": "w"}}


@pytest.mark.parametrize("change, parts", [
    (lambda a: a["sample_ids"].__setitem__(2, "x" * 300), ["row 2", "longer than 256"]),
    (lambda a: a["sample_ids"].__setitem__(1, " s1"), ["row 1", "space"]),
    (lambda a: a["sample_ids"].__setitem__(3, "s\x1b3"), ["row 3", "U+001B"]),
    (lambda a: a["sample_ids"].__setitem__(0, "e\u0301"), ["row 0", "NFC"]),
    (lambda a: a.update(scales={"m0": float("inf")}), ["column 'm0'", "scale"]),
    (lambda a: a.update(scales={"m0": 1e-310}), ["column 'm0'", "subnormal"]),
    (lambda a: (a["tensors"]["m0"].__setitem__((1, 0, 2), 1e37),
                a.update(scales={"m0": 1e-3})),
     ["column 'm0'", "row 1", "id 's1'", "value 1e+37 divided by the column's scale "
      "0.001 overflows float32"]),
    (lambda a: a["labels"].update(label=np.array([0, 2 ** 63 + 1, 0, 0], np.uint64)),
     ["column 'label'", "row 1", "id 's1'"]),
    (lambda a: a["labels"].update(label=np.array([0, 0, -3, 0])),
     ["column 'label'", "row 2", "id 's2'"]),
    (lambda a: a["tensors"].update(m0=np.ones(4, np.float32)), ["column 'm0'", "shape []"]),
    (lambda a: a.update(dataset_meta={"seed": np.int64(3)}), ["not JSON-serialisable"]),
    (lambda a: a.update(dataset_meta=[1, 2]), ["must be a mapping"]),
    (lambda a: a.update(columns={"note": np.array(["x" * 70_000, "", "", ""])}),
     ["column 'note'", "row 0", "70000 bytes"]),
])
def test_writer_refuses_what_readers_refuse(tmp_path, change, parts):
    from mmvm.data.store import DataError, write_site_table

    args = _write_args()
    change(args)
    target = tmp_path / "w.parquet"
    with pytest.raises(DataError) as err:
        write_site_table(target, **args)
    assert str(target) in str(err.value)
    for part in parts:
        assert part in str(err.value), (part, str(err.value))
    assert not target.exists()
