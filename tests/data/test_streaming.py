"""mmvm.data.streaming.StreamingDataset and mmvm.schedule.epoch_batches_grouped:
exact agreement with MultimodalDataset, a bounded row-group cache, validation of
streamed groups, and streaming training (same parameters under the same schedule)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmvm.config import ConfigError, DataConfig, config_from_dict
from mmvm.data import open_dataset
from mmvm.data.dataset import MultimodalDataset
from mmvm.data.store import DataError, write_site_table
from mmvm.data.streaming import StreamingDataset
from mmvm.schedule import epoch_batches, epoch_batches_grouped

torch.set_num_threads(1)


def _assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert a["x"].keys() == b["x"].keys()
    for m in a["x"]:
        assert a["x"][m].dtype == b["x"][m].dtype == torch.float32
        assert torch.equal(a["x"][m], b["x"][m]), m
    for k in ("mask", "index", "label"):
        if k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.fixture
def one_file(tmp_path):
    """300 shuffled ids, an image-like uint8 and a float modality, labels, 16-row groups."""
    rng = np.random.default_rng(0)
    n = 300
    ids = [f"s{i:04d}" for i in rng.permutation(n)]  # file order != sorted order
    img = rng.integers(0, 256, size=(n, 1, 2, 3), dtype=np.uint8)
    vec = rng.normal(size=(n, 4)).astype(np.float32)
    lab = rng.integers(-1, 5, size=n)
    path = tmp_path / "s.parquet"
    write_site_table(path, ids, {"img": img, "vec": vec}, {"label": lab}, {"t": 1},
                     scales={"vec": 2.0}, row_group_size=16)
    return path


# ------------------------------------------------------------------------- exactness
def test_open_dataset_follows_the_streaming_switch(one_file, tmp_path):
    mem = open_dataset(one_file, ["vec"], DataConfig(label="label"), limit=50)
    st = open_dataset(one_file, ["vec"], DataConfig(streaming=True, cache_row_groups=2),
                      limit=50)
    assert type(mem) is MultimodalDataset and type(st) is StreamingDataset
    assert len(mem) == len(st) == 50 and st.cache_row_groups == 2
    _assert_batches_equal(st.batch(range(50)), mem.batch(range(50)))
    # data.decoded_dir (mmvm train's, a simulation's): rows from a decoded copy there
    copy = open_dataset(one_file, ["vec"], DataConfig(streaming=True, decoded_dir=str(
        tmp_path / "copy")), limit=50)
    _assert_batches_equal(copy.batch(range(50)), mem.batch(range(50)))
    assert not copy.cache_info()["reads"] and len(list((tmp_path / "copy").glob("*.npy")))
    whole = open_dataset(one_file, ["vec"], DataConfig(decoded_dir=str(tmp_path / "w")))
    assert type(whole) is MultimodalDataset  # a folder without streaming: no copy


def test_single_file_batches_equal_in_memory(one_file):
    mem = MultimodalDataset.from_parquet(one_file)
    st = StreamingDataset(one_file, cache_row_groups=3)
    assert st.names == mem.names == ["img", "vec"]
    assert st.sample_ids == mem.sample_ids and len(st) == len(mem) == 300
    assert torch.equal(st.mask, mem.mask) and torch.equal(st.labels, mem.labels)
    assert st.shapes == mem.shapes and st.scales == mem.scales == {"img": 255.0, "vec": 2.0}
    rng = np.random.default_rng(1)
    for size in (1, 7, 64, 300):
        rows = rng.choice(300, size=size, replace=False)
        _assert_batches_equal(st.batch(rows), mem.batch(rows))
    rows = torch.tensor([5, 5, -1, 0])  # repeats and negative rows, as a tensor
    _assert_batches_equal(st.batch(rows), mem.batch(rows))
    _assert_batches_equal(st.batch([]), mem.batch(torch.zeros(0, dtype=torch.long)))
    for i in (0, 299):
        a, b = st[i], mem[i]
        assert all(torch.equal(a["x"][m], b["x"][m]) for m in a["x"])
    with pytest.raises(IndexError):
        st.batch([300])


def test_names_subset_and_limit_match(one_file):
    mem = MultimodalDataset.from_parquet(one_file, ["vec"], label="none", limit=50)
    st = StreamingDataset(one_file, ["vec"], label="none", limit=50)
    assert st.names == ["vec"] and st.labels is None and len(st) == 50
    rows = np.arange(50)[::-1].copy()
    _assert_batches_equal(st.batch(rows), mem.batch(rows))
    assert st.sample_ids == mem.sample_ids


@pytest.mark.parametrize("decoded", [False, True], ids=["row-groups", "decoded-copy"])
def test_multi_file_join_with_missing_modalities_matches(tmp_path, decoded):
    rng = np.random.default_rng(2)
    ids = [f"p{i:03d}" for i in range(120)]

    def site(name, pick, mods, row_group_size):
        sel = [ids[i] for i in pick]
        tensors = {m: (rng.integers(0, 256, size=(len(sel), 3), dtype=np.uint8)
                       if m == "a" else rng.normal(size=(len(sel), 2)).astype(np.float32))
                   for m in mods}
        lab = {"label": np.array([int(s[1:]) % 3 for s in sel])}
        write_site_table(tmp_path / f"{name}.parquet", sel, tensors, lab, {},
                         row_group_size=row_group_size)
        return tmp_path / f"{name}.parquet"

    perm = rng.permutation(120)
    paths = [site("x", perm[:90], ["a"], 16),             # a for 90 ids
             site("y", perm[30:], ["b"], 8),               # b for another 90 ids
             site("z", rng.permutation(120)[:40], ["c"], 16),  # c for 40 ids
             site("w", perm[90:], ["a"], 5)]               # a, horizontally, for the rest
    names = ["a", "b", "c"]
    mem = MultimodalDataset.from_parquet(paths, names)
    st = StreamingDataset(paths, names, cache_row_groups=2,
                          decoded_dir=tmp_path / "decoded" if decoded else "")
    assert st.sample_ids == mem.sample_ids and len(st) == 120
    assert torch.equal(st.mask, mem.mask) and not bool(st.mask.all())
    assert torch.equal(st.labels, mem.labels)
    for seed in range(4):
        rows = np.random.default_rng(seed).choice(120, size=40, replace=False)
        _assert_batches_equal(st.batch(rows), mem.batch(rows))
    _assert_batches_equal(st.batch(np.arange(120)), mem.batch(np.arange(120)))
    # the decoded copy: one file per file's held modality, and no group read per batch
    assert len(list((tmp_path / "decoded").glob("*.npy"))) == 4 * decoded
    assert bool(st.cache_info()["reads"]) != decoded
    # default names: every tensor column in file order, as from_parquet
    assert StreamingDataset(paths).names == MultimodalDataset.from_parquet(paths).names
    # every row is in exactly one row group of row_groups()
    rows = np.sort(np.concatenate(st.row_groups()))
    assert rows.tolist() == list(range(120))


def test_join_errors_match_in_memory(tmp_path):
    v = np.zeros((2, 1), np.float32)
    a = write_site_table(tmp_path / "a.parquet", ["s1", "s2"], {"u": v}, None, {})
    b = write_site_table(tmp_path / "b.parquet", ["s2", "s3"], {"u": v}, None, {})
    with pytest.raises(DataError, match=r"sample id 's2' holds modality 'u' in more"):
        StreamingDataset([a, b])
    with pytest.raises(DataError, match=r"modalities \['zz'\] are in no site file"):
        StreamingDataset([a], ["u", "zz"])
    with pytest.raises(DataError, match=r"no such site file"):
        StreamingDataset(tmp_path / "missing.parquet")


def test_position_contains_rows_of(one_file):
    for ds in (StreamingDataset(one_file), MultimodalDataset.from_parquet(one_file)):
        assert ds.contains("s0007") and not ds.contains("nope")
        assert ds.position("s0007") == 7 and ds.rows_of(["s0002", "s0000"]).tolist() == [2, 0]
        with pytest.raises(DataError, match=r"unknown sample id 'nope' \(this dataset "
                                            r"holds 300 ids\)"):
            ds.position("nope")
        with pytest.raises(DataError, match="unknown sample id 'nope'"):
            ds.rows_of(["s0001", "nope"])


# --------------------------------------------------------------------- memory bound
def test_cache_is_bounded_and_grouped_epoch_reads_each_group_once(one_file):
    st = StreamingDataset(one_file, cache_row_groups=2)
    groups = st.row_groups()
    assert len(groups) == math.ceil(300 / 16) == 19
    assert sorted(len(g) for g in groups) == [12] + [16] * 18
    # the grouped schedule with windows of 1 group: each batch spans <= 2 groups
    for epoch in range(2):
        st.reads.clear()
        seen = []
        for rows in epoch_batches_grouped(groups, 20, seed=3, epoch=epoch, window=1):
            st.batch(rows)
            assert len(st.cache_info()["cached"]) <= 2
            seen.append(rows)
        assert sorted(torch.cat(seen).tolist()) == list(range(300))  # each row once
        reads = st.cache_info()["reads"]
        assert len(reads) == 19 and set(reads.values()) == {1}, reads
    # wider windows: still bounded (a group is read at most once per batch touching it)
    st.reads.clear()
    batches = epoch_batches_grouped(groups, 20, seed=3, epoch=0, window=3)
    for rows in batches:
        st.batch(rows)
        assert len(st._cache) <= 2
    assert max(st.reads.values()) <= len(batches)
    assert sum(st.reads.values()) < 3 * 19
    # with a cache of 2 * window groups every group is read once per epoch
    big = StreamingDataset(one_file, cache_row_groups=6)
    for rows in batches:
        big.batch(rows)
    assert set(big.reads.values()) == {1} and big.peak_cached <= 6
    # the full permutation touches many groups per batch: far more reads
    st.reads.clear()
    for rows in epoch_batches(300, 20, 3, 0):
        st.batch(rows)
        assert len(st._cache) <= 2
    assert sum(st.reads.values()) > 3 * 19
    assert st.peak_cached == 2


def test_one_batch_reads_each_group_once_whatever_the_cache(one_file):
    st = StreamingDataset(one_file, cache_row_groups=1)
    st.batch(np.arange(300))
    assert set(st.reads.values()) == {1} and len(st.reads) == 19
    assert st.cache_info()["peak"] == 1


def test_grouped_schedule_is_deterministic_and_a_partition():
    groups = [np.arange(i * 10, i * 10 + 10) for i in range(7)] + [np.arange(70, 73)]
    a = epoch_batches_grouped(groups, 8, seed=1, epoch=2, window=2)
    b = epoch_batches_grouped(groups, 8, seed=1, epoch=2, window=2)
    c = epoch_batches_grouped(groups, 8, seed=1, epoch=3, window=2)
    # 73 = 9 * 8 + 1: the lone last row joins the batch before (mmvm.schedule.cut)
    assert len(a) == 73 // 8 and all(len(x) == 8 for x in a[:-1]) and len(a[-1]) == 9
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert sorted(torch.cat(a).tolist()) == list(range(73))
    for rows in a:  # a batch draws from at most 2 windows = 4 groups
        assert len({int(r) // 10 for r in rows}) <= 4
    with pytest.raises(ValueError):
        epoch_batches_grouped(groups, 8, 1, 0, window=0)


# ----------------------------------------------------------------------- validation
def test_nan_in_a_row_group_names_file_column_row(tmp_path):
    n = 64
    vec = np.zeros((n, 3), np.float32)
    path = tmp_path / "bad.parquet"
    write_site_table(path, [f"r{i:02d}" for i in range(n)], {"v": vec}, None, {},
                     row_group_size=16)
    # write_site_table refuses NaN, so patch it in with pyarrow directly
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    flat = vec.copy()
    flat[37, 1] = np.nan
    col = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), 3)
    t = t.set_column(t.schema.get_field_index("v"), t.schema.field("v"), col)
    pq.write_table(t, path, row_group_size=16)
    st = StreamingDataset(path)  # the index (ids) is fine; tensors are read lazily
    st.batch([0, 1, 63])  # groups without the NaN read fine
    with pytest.raises(DataError, match=r"bad\.parquet: column 'v', row 37 "
                                        r"\(id 'r37'\): NaN or inf"):
        st.batch([5, 37])
    assert (0, 2) not in st.cache_info()["cached"]  # nothing invalid is cached


def test_bad_ids_fail_when_opening(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "dup.parquet"
    write_site_table(path, [f"r{i}" for i in range(40)], {"v": np.zeros((40, 1), np.float32)},
                     None, {}, row_group_size=16)
    t = pq.read_table(path)
    ids = [f"r{i}" for i in range(40)]
    ids[33] = "r2"
    t = t.set_column(0, t.schema.field(0), pa.array(ids))
    pq.write_table(t, path, row_group_size=16)
    with pytest.raises(DataError, match=r"dup\.parquet: column 'sample_id': duplicate "
                                        r"sample id 'r2' in rows 2 and 33"):
        StreamingDataset(path)


# ------------------------------------------------------------------------- training
NAMES = ["m0", "m1", "m2"]


def _raw(root, out, epochs=2, **data):
    mods = {m: {"kind": "image", "shape": [3, 28, 28], "width": 4} for m in NAMES}
    return {"data": {"root": str(root), **data},
            "model": {"method": "mmvm", "latent_dim": 8, "modalities": mods},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 1e-3, "seed": 1,
                      "device": "cpu", "out_dir": str(out), "num_threads": 1}}


def test_streaming_training_equals_in_memory_under_the_same_schedule(tiny_polymnist, tmp_path):
    """Same (default, permutation) schedule: streaming changes how rows are read, not
    which, so the trained parameters are bit-identical to the in-memory run."""
    from mmvm.training import train

    path = tiny_polymnist / "train.parquet"
    mem = train(config_from_dict(_raw(tiny_polymnist, tmp_path / "mem")),
                MultimodalDataset.from_parquet(path, NAMES), show_progress=False)
    cfg = config_from_dict(_raw(tiny_polymnist, tmp_path / "st", streaming=True,
                                cache_row_groups=2))
    st_data = StreamingDataset(path, NAMES, cache_row_groups=cfg.data.cache_row_groups)
    st = train(cfg, st_data, show_progress=False)
    s1, s2 = mem.model.state_dict(), st.model.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert [h["loss"] for h in mem.history] == [h["loss"] for h in st.history]
    assert st_data.peak_cached <= 2 and len(st_data.reads) == 12  # 192 rows / 16
    # how the data is read is not part of the run: the streamed checkpoint resumes
    # in memory (one more epoch) instead of being rejected as another config
    more = config_from_dict(_raw(tiny_polymnist, tmp_path / "st", epochs=3))
    res = train(more, MultimodalDataset.from_parquet(path, NAMES), show_progress=False)
    assert len(res.history) == 3 and res.history[:2] == st.history


def test_grouped_schedule_training_streams_and_learns(tiny_polymnist, tmp_path):
    """The grouped schedule gives other batches than the permutation (so no exact
    comparison with the in-memory run): the loss falls, and each of the 12 row groups
    is read at most once per epoch with a 2-group cache."""
    from mmvm.training import train

    cfg = config_from_dict(_raw(tiny_polymnist, tmp_path / "g", epochs=3, streaming=True,
                                cache_row_groups=2, schedule="grouped", schedule_window=1))
    data = StreamingDataset(tiny_polymnist / "train.parquet", NAMES, cache_row_groups=2)
    res = train(cfg, data, show_progress=False)
    losses = [h["loss"] for h in res.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    assert data.peak_cached <= 2
    # at most once per epoch (a group cached at an epoch's end may serve the next)
    assert len(data.reads) == 12 and max(data.reads.values()) <= 3
    with pytest.raises(ValueError, match="needs a dataset with row groups"):
        train(cfg, MultimodalDataset.from_parquet(tiny_polymnist / "train.parquet", NAMES),
              resume=False, show_progress=False)


def test_cli_train_streams_when_configured(tiny_polymnist, tmp_path, monkeypatch):
    import argparse

    import mmvm.cli.train as cli_train
    import mmvm.training as training

    seen = {}

    def fake_train(cfg, data, **kw):
        seen["data"] = data
        return training.TrainResult(model=None, history=[{"loss": 1.0}])

    monkeypatch.setattr(training, "train", fake_train)
    mods = [f"model.modalities.{m}.{kv}" for m in NAMES
            for kv in ('kind="image"', "shape=[3, 28, 28]", "width=4")]
    for streaming, kind in (("true", StreamingDataset), ("false", MultimodalDataset)):
        args = argparse.Namespace(config=None, fresh=True, no_progress=True, overrides=[
            f"data.root={tiny_polymnist}", f"data.streaming={streaming}",
            "data.cache_row_groups=3", "data.max_train=100", *mods,
            f"train.out_dir={tmp_path / 'cli'}"])
        assert cli_train.run(args) == 0
        assert type(seen["data"]) is kind and len(seen["data"]) == 100
    assert seen["data"].names == NAMES


# --------------------------------------------------------------------------- config
def test_config_keys_are_strict():
    base = _raw("r", "o")
    cfg = config_from_dict(base)
    assert (cfg.data.streaming, cfg.data.cache_row_groups, cfg.data.schedule,
            cfg.data.schedule_window) == (False, 8, "permutation", 4)
    for data, match in [({"streaming": 1}, r"data\.streaming must be bool"),
                        ({"cache_row_groups": 0}, r"data\.cache_row_groups must be >= 1"),
                        ({"schedule_window": 0}, r"data\.schedule_window must be >= 1"),
                        ({"schedule": "random"}, r"data\.schedule = 'random'"),
                        ({"schedule": "grouped"}, r"needs data\.streaming = true"),
                        ({"stream": True}, r"did you mean 'data\.streaming'")]:
        with pytest.raises(ConfigError, match=match):
            config_from_dict({**base, "data": data})
