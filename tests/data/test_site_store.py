"""The site Parquet format: every bad input gets its own clear error, no partial file."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmvm.data.store import (
    DataError,
    iter_site_batches,
    read_site_meta,
    read_site_table,
    write_site_table,
)

META = {"name": "unit-test"}


def _valid(n: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"s{i:02d}" for i in range(n)]
    tensors = {"img": rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8),
               "vec": rng.normal(size=(n, 3)).astype(np.float32)}
    return ids, tensors, {"label": np.arange(n) % 3}


def _files(d):
    return sorted(p.name for p in d.iterdir())


def test_roundtrip_preserves_everything(tmp_path):
    ids, x, y = _valid()
    p = write_site_table(tmp_path / "a.parquet", ids, x, y, META,
                         columns={"extra": np.arange(6)})
    t = read_site_table(p)
    assert t.sample_ids == ids
    np.testing.assert_array_equal(t.tensors["img"], x["img"])
    np.testing.assert_array_equal(t.tensors["vec"], x["vec"])
    assert t.scales == {"img": 255.0, "vec": 1.0}
    np.testing.assert_array_equal(t.labels["label"], y["label"])
    np.testing.assert_array_equal(t.columns["extra"], np.arange(6))
    assert t.dataset_meta == META
    meta = read_site_meta(p)
    assert meta["tensors"]["img"]["shape"] == (1, 4, 4) and meta["num_rows"] == 6


# ------------------------------------------------------------------ writer rejects
@pytest.mark.parametrize("case, match", [
    ("dtype", r"column 'img': dtype int64 not allowed"),
    ("rows", r"column 'vec': 5 rows for 6 sample ids"),
    ("duplicate", r"duplicate sample id 's01' in rows 1 and 3"),
    ("null_id", r"column 'sample_id', row 2: null sample id"),
    ("empty_id", r"column 'sample_id', row 4: empty sample id"),
    ("nan", r"column 'vec', row 2 \(id 's02'\): NaN or inf"),
    ("inf", r"column 'vec', row 5 \(id 's05'\): NaN or inf"),
    ("label_float", r"column 'label': labels must be integer"),
    ("label_name", r"column 'odor': label columns are named"),
])
def test_writer_rejects_bad_input_and_leaves_nothing(tmp_path, case, match):
    ids, x, y = _valid()
    labels = dict(y)
    if case == "dtype":
        x["img"] = x["img"].astype(np.int64)
    elif case == "rows":
        x["vec"] = x["vec"][:5]
    elif case == "duplicate":
        ids[3] = "s01"
    elif case == "null_id":
        ids[2] = None
    elif case == "empty_id":
        ids[4] = ""
    elif case == "nan":
        x["vec"][2, 1] = np.nan
    elif case == "inf":
        x["vec"][5, 0] = np.inf
    elif case == "label_float":
        labels["label"] = labels["label"].astype(np.float32)
    elif case == "label_name":
        labels = {"odor": y["label"]}
    target = tmp_path / "out" / "site.parquet"
    with pytest.raises(DataError, match=match) as err:
        write_site_table(target, ids, x, labels, META)
    assert str(target) in str(err.value)
    assert not target.exists()
    assert not (tmp_path / "out").exists() or _files(tmp_path / "out") == []


def test_failed_overwrite_keeps_the_previous_file(tmp_path):
    ids, x, y = _valid()
    p = write_site_table(tmp_path / "a.parquet", ids, x, y, META)
    before = p.read_bytes()
    x["vec"][0, 0] = np.nan
    with pytest.raises(DataError):
        write_site_table(p, ids, x, y, META)
    assert p.read_bytes() == before
    assert _files(tmp_path) == ["a.parquet"]


# ------------------------------------------------------------------ reader rejects
def _rewrite(src, dst, table=None, metadata=None):
    t = pq.read_table(src) if table is None else table
    if metadata is not None:
        t = t.replace_schema_metadata(metadata)
    pq.write_table(t, dst)
    return dst


def _meta(path) -> dict:
    return dict(pq.read_schema(path).metadata)


def test_reader_names_file_column_for_metadata_shape_mismatch(tmp_path):
    ids, x, y = _valid()
    p = write_site_table(tmp_path / "a.parquet", ids, x, y, META)
    m = _meta(p)
    m[b"mmvm.tensor.img"] = json.dumps({"shape": [1, 4, 5], "dtype": "uint8",
                                        "scale": 255}).encode()
    bad = _rewrite(p, tmp_path / "bad.parquet", metadata=m)
    with pytest.raises(DataError, match=r"bad.parquet: column 'img': list size 16 does"
                                        r" not match metadata shape \[1, 4, 5\]"):
        read_site_table(bad)


def test_reader_rejects_metadata_dtype_mismatch(tmp_path):
    ids, x, y = _valid()
    p = write_site_table(tmp_path / "a.parquet", ids, x, y, META)
    m = _meta(p)
    m[b"mmvm.tensor.vec"] = json.dumps({"shape": [3], "dtype": "uint8"}).encode()
    bad = _rewrite(p, tmp_path / "bad.parquet", metadata=m)
    with pytest.raises(DataError, match=r"column 'vec': stored dtype float does not "
                                        r"match metadata dtype uint8"):
        read_site_table(bad)


def test_reader_rejects_unparseable_metadata_and_orphan_keys(tmp_path):
    ids, x, y = _valid()
    p = write_site_table(tmp_path / "a.parquet", ids, x, y, META)
    m = _meta(p)
    m[b"mmvm.tensor.img"] = b"{not json"
    bad = _rewrite(p, tmp_path / "bad.parquet", metadata=m)
    with pytest.raises(DataError, match=r"column 'img': bad tensor metadata"):
        read_site_meta(bad)
    m = _meta(p)
    m[b"mmvm.tensor.ghost"] = m[b"mmvm.tensor.vec"]
    bad2 = _rewrite(p, tmp_path / "bad2.parquet", metadata=m)
    with pytest.raises(DataError, match=r"metadata 'mmvm.tensor.ghost' names a column "
                                        r"that does not exist"):
        read_site_table(bad2)


def test_reader_rejects_tensor_column_without_metadata(tmp_path):
    ids, x, y = _valid()
    p = write_site_table(tmp_path / "a.parquet", ids, x, y, META)
    m = {k: v for k, v in _meta(p).items() if k != b"mmvm.tensor.vec"}
    bad = _rewrite(p, tmp_path / "bad.parquet", metadata=m)
    with pytest.raises(DataError, match=r"column 'vec': tensor column without schema"):
        read_site_table(bad)


@pytest.mark.parametrize("case, match", [
    ("duplicate", r"duplicate sample id 's01' in rows 1 and 4"),
    ("null", r"column 'sample_id', row 3: null sample id"),
    ("nan", r"column 'vec', row 2 \(id 's02'\): NaN or inf"),
    ("null_tensor", r"column 'vec', row 5 \(id 's05'\): null tensor"),
    ("missing_id_column", r"missing column 'sample_id'"),
])
def test_reader_rejects_bad_rows(tmp_path, case, match):
    ids, x, y = _valid()
    p = write_site_table(tmp_path / "a.parquet", ids, x, y, META)
    t = pq.read_table(p)
    if case == "duplicate":
        ids[4] = "s01"
        t = t.set_column(0, "sample_id", pa.array(ids, pa.string()))
    elif case == "null":
        ids[3] = None
        t = t.set_column(0, "sample_id", pa.array(ids, pa.string()))
    elif case == "nan":
        v = x["vec"].copy()
        v[2, 2] = np.nan
        col = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), 3)
        t = t.set_column(t.schema.get_field_index("vec"), "vec", col)
    elif case == "null_tensor":
        vals = [list(r) for r in x["vec"]]
        vals[5] = None
        col = pa.array(vals, type=pa.list_(pa.float32(), 3))
        t = t.set_column(t.schema.get_field_index("vec"), "vec", col)
    elif case == "missing_id_column":
        t = t.drop_columns(["sample_id"])
    bad = _rewrite(p, tmp_path / "bad.parquet", table=t)
    with pytest.raises(DataError, match=match) as err:
        read_site_table(bad)
    assert "bad.parquet" in str(err.value)
    if case != "missing_id_column":  # streaming reports the same row
        with pytest.raises(DataError, match=match):
            for _ in iter_site_batches(bad, None, batch_size=2):
                pass


def test_duplicate_across_stream_batches_is_caught(tmp_path):
    ids, x, y = _valid()
    ids[5] = "s00"
    t = pq.read_table(write_site_table(tmp_path / "a.parquet", _valid()[0], x, y, META))
    t = t.set_column(0, "sample_id", pa.array(ids, pa.string()))
    bad = _rewrite(tmp_path / "a.parquet", tmp_path / "bad.parquet", table=t)
    with pytest.raises(DataError, match=r"duplicate sample id 's00' in rows 0 and 5"):
        list(iter_site_batches(bad, None, batch_size=2))


def test_unknown_modality_lists_the_available_ones(tmp_path):
    ids, x, y = _valid()
    p = write_site_table(tmp_path / "a.parquet", ids, x, y, META)
    with pytest.raises(DataError, match=r"a.parquet: unknown modality \['audio'\]; "
                                        r"available: \['img', 'vec'\]"):
        read_site_table(p, ["img", "audio"])
    with pytest.raises(DataError, match=r"unknown modality"):
        next(iter_site_batches(p, ["audio"]))


def test_corrupted_and_missing_files(tmp_path):
    ids, x, y = _valid(50)
    p = write_site_table(tmp_path / "a.parquet", ids, x, y, META)
    data = p.read_bytes()
    trunc = tmp_path / "truncated.parquet"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated.parquet: not a Parquet file"):
        read_site_table(trunc)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"hello, not parquet at all" * 10)
    with pytest.raises(DataError, match=r"garbage.parquet: not a Parquet file"):
        read_site_meta(garbage)
    with pytest.raises(DataError, match=r"nothere.parquet: no such file"):
        read_site_table(tmp_path / "nothere.parquet")
    # a site folder given where its files were meant (mmvm encode said "no such file")
    with pytest.raises(DataError) as info:
        read_site_meta(tmp_path)
    assert str(info.value) == (f"{tmp_path}: is a folder; give its site files, e.g. "
                               f"{tmp_path / '*.parquet'}")


def test_corrupted_data_pages_raise_data_error(tmp_path):
    rng = np.random.default_rng(1)
    n = 64
    ids = [f"r{i}" for i in range(n)]
    x = {"v": rng.normal(size=(n, 256)).astype(np.float32)}
    p = write_site_table(tmp_path / "a.parquet", ids, x, None, META,
                         compression="none")
    raw = bytearray(p.read_bytes())
    mid = len(raw) // 3
    raw[mid: mid + 4096] = bytes(4096)  # zero a stretch of data pages, footer intact
    bad = tmp_path / "zeroed.parquet"
    bad.write_bytes(bytes(raw))
    try:
        t = read_site_table(bad)
    except DataError as e:
        assert "zeroed.parquet" in str(e)
    else:  # page bytes hit only values: the file still parses, nothing invalid passes
        assert t.tensors["v"].shape == (n, 256)


# ------------------------------------------------------------------ streaming
def test_streaming_equals_whole_read(tmp_path):
    ids, x, y = _valid(103, seed=3)
    p = write_site_table(tmp_path / "a.parquet", ids, x, y, META, row_group_size=17,
                         columns={"extra": np.arange(103)})
    whole = read_site_table(p)
    for bs in (1, 10, 17, 1000):
        parts = list(iter_site_batches(p, None, batch_size=bs))
        assert [b.start for b in parts] == list(
            np.cumsum([0] + [len(b) for b in parts[:-1]]))
        assert sum((b.sample_ids for b in parts), []) == whole.sample_ids
        for m in ("img", "vec"):
            np.testing.assert_array_equal(
                np.concatenate([b.tensors[m] for b in parts]), whole.tensors[m])
        np.testing.assert_array_equal(
            np.concatenate([b.labels["label"] for b in parts]), whole.labels["label"])
        np.testing.assert_array_equal(
            np.concatenate([b.columns["extra"] for b in parts]), whole.columns["extra"])
    sel = list(iter_site_batches(p, ["vec"], batch_size=50))
    assert all(list(b.tensors) == ["vec"] for b in sel)
