"""The streaming site writer: chunks of rows make the file one call would make, and an
error in any chunk (or in the iterator) leaves neither a file nor a temporary file."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmvm.data.store import (
    DataError,
    SiteChunk,
    iter_site_batches,
    read_site_table,
    write_site_table,
    write_site_table_batches,
)

META = {"name": "unit-test", "n": 103}
N = 103
CUTS = [0, 3, 3, 20, 50, 51, 90, N]  # uneven chunks, one empty, none aligned to 17


def _data(n: int = N, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"s{i:03d}" for i in range(n)]
    x = {"img": rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8),
         "vec": rng.normal(size=(n, 3)).astype(np.float32)}
    y = {"label": np.arange(n) % 3, "label.odd": np.arange(n) % 2}
    c = {"extra": np.arange(n) * 10, "name": np.array([f"t{i}" for i in range(n)])}
    return ids, x, y, c


def _chunks(ids, x, y, c, cuts=CUTS):
    for i, j in zip(cuts[:-1], cuts[1:], strict=True):
        yield SiteChunk(ids[i:j], {k: v[i:j] for k, v in x.items()},
                        {k: v[i:j] for k, v in y.items()},
                        {k: v[i:j] for k, v in c.items()})


def _files(d):
    return sorted(p.name for p in d.iterdir())


def test_chunks_write_the_file_one_call_writes(tmp_path):
    ids, x, y, c = _data()
    one = write_site_table(tmp_path / "one.parquet", ids, x, y, META, columns=c,
                           scales={"vec": 2.0}, row_group_size=17)
    chunks = _chunks(ids, x, y, c)  # a generator: consumed once, lazily
    many = write_site_table_batches(tmp_path / "many.parquet", chunks, META,
                                    scales={"vec": 2.0}, row_group_size=17)
    assert many.read_bytes() == one.read_bytes()
    md = pq.ParquetFile(many).metadata
    assert [md.row_group(k).num_rows for k in range(md.num_row_groups)] == \
        [17] * 6 + [1]  # regrouped whatever the chunk sizes
    t = read_site_table(many)
    assert t.sample_ids == ids and t.scales == {"img": 255.0, "vec": 2.0}
    for m in x:
        np.testing.assert_array_equal(t.tensors[m], x[m])
    for k in y:
        np.testing.assert_array_equal(t.labels[k], y[k])
    for k in c:
        np.testing.assert_array_equal(t.columns[k], c[k])
    assert t.dataset_meta == META
    parts = list(iter_site_batches(many, ["vec"], batch_size=10))
    np.testing.assert_array_equal(np.concatenate([b.tensors["vec"] for b in parts]),
                                  x["vec"])


def test_streaming_dataset_reads_a_streamed_file(tmp_path):
    torch = pytest.importorskip("torch")
    from mmvm.data.dataset import MultimodalDataset
    from mmvm.data.streaming import StreamingDataset

    ids, x, y, c = _data()
    p = write_site_table_batches(tmp_path / "a.parquet", _chunks(ids, x, y, c), META,
                                 row_group_size=17)
    one = write_site_table(tmp_path / "one.parquet", ids, x, y, META, columns=c,
                           row_group_size=17)
    rows = [0, 5, 16, 17, 50, 102]
    got = StreamingDataset(p, ["img", "vec"]).batch(rows)
    want = MultimodalDataset.from_parquet([one], ["img", "vec"]).batch(rows)
    assert set(got) == set(want)
    for k, v in want.items():
        if isinstance(v, dict):
            for m in v:
                assert torch.equal(got[k][m], v[m]), (k, m)
        elif isinstance(v, torch.Tensor):
            assert torch.equal(got[k], v), k


def test_plain_tuples_and_labels_or_columns_left_out(tmp_path):
    ids, x, _, _ = _data(10)
    chunks = [(ids[:4], {"img": x["img"][:4]}), (ids[4:], {"img": x["img"][4:]})]
    p = write_site_table_batches(tmp_path / "a.parquet", iter(chunks), {},
                                 row_group_size=4)
    assert p.read_bytes() == write_site_table(tmp_path / "b.parquet", ids,
                                              {"img": x["img"]}, None, {},
                                              row_group_size=4).read_bytes()


# ------------------------------------------------------------------ errors mid-stream
class Boom(RuntimeError):
    pass


def _break(case, chunks):
    """Spoil the third chunk (rows 3..19; the second one is empty)."""
    for k, ch in enumerate(chunks):
        if k == 2:
            if case == "iterator":
                raise Boom("the source went away")
            ids, x, y, c = list(ch.sample_ids), dict(ch.tensors), dict(ch.labels), \
                dict(ch.columns)
            if case == "duplicate":
                ids[4] = "s001"  # row 3 + 4 = 7 repeats row 1 of the first chunk
            elif case == "nan":
                x["vec"] = x["vec"].copy()
                x["vec"][5, 1] = np.nan  # row 8
            elif case == "shape":
                x["img"] = x["img"].reshape(-1, 4, 4, 1)
            elif case == "dtype":
                x["vec"] = x["vec"].astype(np.uint8)
            elif case == "label_dtype":
                y["label"] = y["label"].astype(np.float64)
            elif case == "missing":
                del c["extra"]
            elif case == "extra":
                x["new"] = x["img"]
            elif case == "column_type":
                c["extra"] = c["extra"].astype(np.float64)
            elif case == "rows":
                x["vec"] = x["vec"][:-1]
            ch = SiteChunk(ids, x, y, c)
        yield ch


@pytest.mark.parametrize("case, match", [
    ("duplicate", r"column 'sample_id': duplicate sample id 's001' in rows 1 and 7"),
    ("nan", r"column 'vec', row 8 \(id 's008'\): NaN or inf"),
    ("shape", r"column 'img', chunk at row 3: tensor \[4, 4, 1\] uint8 scale 255, "
              r"but the first chunk fixed \[1, 4, 4\] uint8 scale 255"),
    ("dtype", r"column 'vec', chunk at row 3: tensor \[3\] uint8 scale 255, but the "
              r"first chunk fixed \[3\] float32 scale 1"),
    ("label_dtype", r"column 'label', chunk at row 3: labels must be integer \[17\]"),
    ("missing", r"column 'extra', chunk at row 3: missing \(the first chunk fixed"),
    ("extra", r"column 'new', chunk at row 3: not in the first chunk"),
    ("column_type", r"column 'extra', chunk at row 3: type double, but the first "
                    r"chunk fixed int64"),
    ("rows", r"column 'vec', chunk at row 3: 16 rows for 17 sample ids"),
    ("iterator", r"the source went away"),
])
def test_error_mid_stream_leaves_no_file(tmp_path, case, match):
    ids, x, y, c = _data()
    target = tmp_path / "out" / "site.parquet"
    err = Boom if case == "iterator" else DataError
    during = []

    def watched(chunks):
        for ch in chunks:
            during.append(_files(target.parent))
            yield ch

    with pytest.raises(err, match=match) as info:
        write_site_table_batches(target, watched(_break(case, _chunks(ids, x, y, c))),
                                 META, row_group_size=2)
    if case != "iterator":
        assert str(target) in str(info.value)
    # rows were streamed into a temporary file, which is gone with the error
    assert during[-1][0].startswith(".site.parquet.") and len(during[-1]) == 1
    assert not target.exists() and _files(tmp_path / "out") == []


def test_failed_stream_keeps_the_previous_file(tmp_path):
    ids, x, y, c = _data()
    p = write_site_table(tmp_path / "a.parquet", ids, x, y, META, columns=c)
    before = p.read_bytes()
    with pytest.raises(DataError, match=r"NaN or inf"):
        write_site_table_batches(p, _break("nan", _chunks(ids, x, y, c)), META)
    assert p.read_bytes() == before and _files(tmp_path) == ["a.parquet"]


def test_no_chunk_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"a.parquet: no chunk to write"):
        write_site_table_batches(tmp_path / "a.parquet", [], META)
    assert _files(tmp_path) == []


def test_one_empty_chunk_writes_an_empty_file(tmp_path):
    ids, x, y, c = _data(0)
    p = write_site_table_batches(tmp_path / "a.parquet", [SiteChunk(ids, x, y, c)], {})
    t = read_site_table(p)
    assert len(t) == 0 and t.tensors["vec"].shape == (0, 3)


def test_a_tensor_cannot_take_a_label_or_column_name(tmp_path):
    """A label (or a carried column) of a tensor's name would overwrite the tensor's
    column while the schema still describes the tensor: an unreadable file."""
    ids, x, y, c = _data()
    with pytest.raises(DataError, match="'label' and 'label.<name>' are label columns"):
        write_site_table(tmp_path / "a.parquet", ids, {"label": x["vec"]}, y, META)
    with pytest.raises(DataError, match="column 'vec' is also a tensor"):
        write_site_table(tmp_path / "a.parquet", ids, x, y, META, columns={"vec": c["extra"]})
    assert _files(tmp_path) == []
