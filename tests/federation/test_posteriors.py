"""mmvm.federation.posteriors: the wire format of (mu, logvar) tables, and its checks."""

from __future__ import annotations

import io
import random

import numpy as np
import pyarrow as pa
import pytest

from mmvm.federation.posteriors import (
    MODALITY_KEY,
    PosteriorError,
    Posteriors,
    decode_table,
    encode_table,
    merge_tables,
    select_rows,
)

D = 8
F32, U32 = pa.float32(), pa.uint32()


def _post(rows, seed=0, d=D, scale=3.0):
    rng = np.random.default_rng(seed)
    return Posteriors(np.array(rows, dtype=np.int64),
                      (scale * rng.normal(size=(len(rows), d))).astype(np.float32),
                      rng.normal(size=(len(rows), d)).astype(np.float32))


def _table():
    return {"m0": _post(range(20), 0), "m1": _post(range(5, 30), 1)}


def _raw_blob(batches, d=D, dtype=F32, row_type=U32):
    """An IPC stream written by hand: [(modality or None, rows, mu, logvar)]."""
    schema = pa.schema([("row", row_type), ("mu", pa.list_(dtype, d)),
                        ("logvar", pa.list_(dtype, d))])
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema) as w:
        for name, rows, mu, lv in batches:
            cols = [pa.array(rows, row_type)] + [
                pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), dtype), d)
                for a in (mu, lv)]
            meta = None if name is None else {MODALITY_KEY: name.encode()}
            w.write_batch(pa.RecordBatch.from_arrays(cols, schema=schema), custom_metadata=meta)
    return sink.getvalue()


# ----------------------------------------------------------------------- round trip
def test_float32_round_trip_is_exact():
    table = _table()
    back = decode_table(encode_table(table), latent_dim=D)
    assert list(back) == ["m0", "m1"]
    for name, p in table.items():
        q = back[name]
        assert np.array_equal(q.rows, p.rows) and q.rows.dtype == np.int64
        assert q.mu.dtype == q.logvar.dtype == np.float32
        assert np.array_equal(q.mu, p.mu) and np.array_equal(q.logvar, p.logvar)


def test_float16_round_trip_within_1e3_relative_and_half_the_bytes():
    table = _table()
    blob16, blob32 = encode_table(table, float16=True), encode_table(table)
    back = decode_table(blob16, latent_dim=D)
    for name, p in table.items():
        q = back[name]
        assert q.mu.dtype == np.float32 and np.array_equal(q.rows, p.rows)
        for a, b in ((q.mu, p.mu), (q.logvar, p.logvar)):
            # float16 keeps 11 significant bits: relative error <= 2^-11 ~ 4.9e-4
            assert np.all(np.abs(a - b) <= 1e-3 * np.abs(b) + 1e-7)
    value_bytes = sum(2 * p.mu.size for p in table.values())  # mu + logvar, per dtype byte
    assert len(blob32) - len(blob16) >= value_bytes * 2 * 0.9


def test_empty_table_and_empty_modality():
    assert encode_table({}) == b"" and decode_table(b"") == {}
    back = decode_table(encode_table({"m0": _post([], 0)}))
    assert len(back["m0"]) == 0 and back["m0"].mu.shape == (0, D)


# ---------------------------------------------------------------------- bad messages
def test_truncated_bytes_raise_posterior_error():
    blob = encode_table(_table())
    for cut in (1, 7, 50, len(blob) // 2, len(blob) - 1):
        with pytest.raises(PosteriorError, match=r"posterior table from site-b: corrupted "
                                                 r"Arrow data"):
            decode_table(blob[:cut], sender="site-b")


def test_random_corruption_never_escapes_as_another_error_or_a_crash():
    blob = encode_table(_table(), float16=True)
    rng = random.Random(0)
    errors = 0
    for _ in range(400):
        bad = bytearray(blob)
        for _ in range(3):
            bad[rng.randrange(len(bad))] ^= rng.randrange(1, 256)
        try:
            out = decode_table(bytes(bad), latent_dim=D)
        except PosteriorError as err:
            assert "posterior table from peer" in str(err)
            errors += 1
        else:  # IPC has no checksum: flipped value bits may decode, but validly
            for p in out.values():
                assert np.isfinite(p.mu).all() and len(set(p.rows)) == len(p.rows)
    assert errors > 200  # most corruptions hit framing, offsets or rows: refused


def test_garbage_bytes():
    with pytest.raises(PosteriorError, match="corrupted Arrow data"):
        decode_table(b"this is not arrow at all" * 4)


def test_wrong_latent_size_names_modality():
    blob = encode_table({"m2": _post([0, 1], d=4)})
    with pytest.raises(PosteriorError, match=r"from site-c, modality 'm2': mu has 4 "
                                             r"dimensions, the model's latent space has 8"):
        decode_table(blob, latent_dim=8, sender="site-c")
    assert decode_table(blob)["m2"].mu.shape == (2, 4)  # no latent_dim: not checked


@pytest.mark.parametrize("col", ["mu", "logvar"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_names_modality_column_and_row(col, value):
    p = _post([7, 8, 9])
    getattr(p, col)[1, 3] = value
    with pytest.raises(PosteriorError, match=rf"modality 'm1': NaN or inf in {col} of "
                                             rf"row 8"):
        decode_table(encode_table({"m1": p}), latent_dim=D)


def test_float16_overflow_is_caught_on_decode():
    p = _post([4, 5])
    p.mu[0, 0] = 1e6  # beyond float16's range -> inf on the wire
    with pytest.warns(RuntimeWarning, match="overflow"):  # numpy's, as it casts
        blob = encode_table({"m0": p}, float16=True)
    with pytest.raises(PosteriorError, match=r"modality 'm0': NaN or inf in mu of row 4"):
        decode_table(blob)


def test_values_beyond_the_limits_are_refused_also_when_increments_take_them_there():
    """|mu| <= 65504 and |logvar| <= 80 (exp stays finite in float32), checked on the
    absolute values: increments may be up to twice that (a - b), but the value they
    make must stay inside, or a sender could push a row past the limit window by
    window, and the recipient of the server's forward would be the one to fail."""
    p = _post([4, 5])
    p.logvar[1, 0] = -81.0
    with pytest.raises(PosteriorError, match=r"logvar of row 5 \(or a value beyond \+-80\)"):
        decode_table(encode_table({"m0": p}))
    near = (np.zeros((2, D), np.float32), np.full((2, D), 60.0, np.float32))
    inc = _post([0, 1])
    inc.logvar[:] = 30.0  # within the increment's limit, 90 in all
    blob = encode_table({}, deltas={"m0": inc})
    with pytest.raises(PosteriorError, match="increments take values beyond"):
        decode_table(blob, base=lambda m, rows: near)
    inc.logvar[:] = -100.0  # -40 in all: fine
    got = decode_table(encode_table({}, deltas={"m0": inc}), base=lambda m, rows: near)
    assert np.allclose(got["m0"].logvar, -40.0)


def test_duplicate_out_of_range_and_malformed_rows_name_modality():
    with pytest.raises(PosteriorError, match=r"modality 'm0': duplicate rows"):
        decode_table(encode_table({"m0": _post([1, 2, 1])}))
    with pytest.raises(PosteriorError, match=r"modality 'm0': row 12 is outside the 10 "):
        decode_table(encode_table({"m0": _post([3, 12])}), n_rows=10)
    p = _post([0, 1])
    for rows, row_type in (([0, None], pa.int64()), (["a", "b"], pa.string()),
                           ([-1, 0], pa.int64())):
        with pytest.raises(PosteriorError, match=r"modality 'm0': "):
            decode_table(_raw_blob([("m0", rows, p.mu, p.logvar)], row_type=row_type))


def test_untagged_or_repeated_modality_batches():
    p = _post([0])
    blob = _raw_blob([(None, p.rows, p.mu, p.logvar)])
    with pytest.raises(PosteriorError, match="a batch lacks its modality tag"):
        decode_table(blob)
    q = _post([1])
    blob = _raw_blob([("m0", p.rows, p.mu, p.logvar), ("m0", q.rows, q.mu, q.logvar)])
    with pytest.raises(PosteriorError, match=r"modality 'm0' appears twice"):
        decode_table(blob)


def test_wrong_columns_name_modality():
    schema = pa.schema([("row", pa.uint32()), ("mean", pa.list_(pa.float32(), 2))])
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema) as w:
        w.write_batch(pa.RecordBatch.from_arrays(
            [pa.array([0], pa.uint32()),
             pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0], pa.float32()), 2)],
            schema=schema), custom_metadata={MODALITY_KEY: b"m3"})
    with pytest.raises(PosteriorError, match=r"modality 'm3': columns \['row', 'mean'\]"):
        decode_table(sink.getvalue())


def test_encode_and_construct_checks():
    with pytest.raises(PosteriorError, match=r"disagree on the latent size: \[4, 8\]"):
        encode_table({"m0": _post([0], d=8), "m1": _post([0], d=4)})
    with pytest.raises(PosteriorError, match=r"must both be \[2, D\]"):
        Posteriors([0, 1], np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(PosteriorError, match=r"must both be \[3, D\]"):
        Posteriors([0, 1, 2], np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32))


# ------------------------------------------------------------------ merge and select
def test_merge_concatenates_shards_and_keeps_rows_aligned():
    a, b = _post([0, 2], 0), _post([1, 3], 1)
    c = _post([0, 1], 2)
    merged = merge_tables([{"m0": a, "m1": c}, {"m0": b}])
    assert merged["m0"].rows.tolist() == [0, 2, 1, 3]
    assert np.array_equal(merged["m0"].mu, np.concatenate([a.mu, b.mu]))
    assert np.array_equal(merged["m0"].logvar, np.concatenate([a.logvar, b.logvar]))
    assert merged["m1"] is c
    assert merge_tables([]) == {}


def test_merge_rejects_the_same_sample_from_two_sites():
    with pytest.raises(PosteriorError, match=r"modality 'm0': row 2 reported by two sites"):
        merge_tables([{"m0": _post([1, 2])}, {"m0": _post([3, 2])}])
    # the same sample in different modalities is the normal vertical case
    merged = merge_tables([{"m0": _post([1])}, {"m1": _post([1])}])
    assert set(merged) == {"m0", "m1"}


def test_select_rows():
    table = {"m0": _post([0, 1, 2, 3], 0), "m1": _post([1, 3], 1), "m2": _post([0], 2)}
    out = select_rows(table, np.array([3, 1, 99]), exclude=["m1"])
    assert list(out) == ["m0"]  # m1 excluded; m2 has none of the wanted rows
    assert out["m0"].rows.tolist() == [1, 3]
    assert np.array_equal(out["m0"].mu, table["m0"].mu[[1, 3]])
    assert np.array_equal(out["m0"].logvar, table["m0"].logvar[[1, 3]])
    assert select_rows(table, np.array([], dtype=np.int64)) == {}


def test_lookup_finds_rows_in_any_order():
    p = _post([9, 2, 5])
    found, pos = p.lookup(np.array([5, 7, 9, 2]))
    assert found.tolist() == [True, False, True, True]
    assert pos[found].tolist() == [2, 0, 1]
    found, _ = _post([]).lookup(np.array([1, 2]))
    assert not found.any()


# ---------------------------------------------------------------- frames, int8, increments
FRAME = np.arange(0, 60, 2)  # the rows of a window a site holds (sorted)


def _framed_blob(batches, d=D, dtype=F32):
    """An implied-rows stream by hand: [(metadata, mu, logvar)] (no row column)."""
    schema = pa.schema([("mu", pa.list_(dtype, d)), ("logvar", pa.list_(dtype, d))])
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema) as w:
        for meta, mu, lv in batches:
            cols = [pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), type=dtype), d)
                    for a in (mu, lv)]
            w.write_batch(pa.RecordBatch.from_arrays(cols, schema=schema),
                          custom_metadata={MODALITY_KEY: b"m0", **meta})
    return sink.getvalue()


def test_rows_of_the_whole_frame_travel_implied():
    table = {"m0": _post(FRAME, 0), "m1": _post(FRAME, 1)}
    framed = encode_table(table, frame=FRAME)
    assert len(encode_table(table)) - len(framed) >= 2 * 4 * len(FRAME)  # no uint32 rows
    assert pa.ipc.open_stream(io.BytesIO(framed)).schema.names == ["mu", "logvar"]
    back = decode_table(framed, frame=FRAME, latent_dim=D)
    for m in table:
        np.testing.assert_array_equal(back[m].rows, FRAME)
        np.testing.assert_array_equal(back[m].mu, table[m].mu)


def test_part_of_the_frame_travels_as_a_bitmap_in_any_order():
    rows = FRAME[[7, 3, 20, 0]]  # unsorted, as merged shards come
    table = {"m0": _post(rows, 0)}
    blob = encode_table(table, frame=FRAME)
    assert len(encode_table(table)) > len(blob)
    back = decode_table(blob, frame=FRAME)["m0"]
    assert back.rows.tolist() == sorted(rows.tolist())
    found, pos = back.lookup(rows)
    assert found.all()
    np.testing.assert_array_equal(back.mu[pos], table["m0"].mu)


def test_rows_outside_the_frame_keep_the_row_column():
    table = {"m0": _post([1, 2, 4], 0)}  # 1 is not in FRAME
    blob = encode_table(table, frame=FRAME)
    assert pa.ipc.open_stream(io.BytesIO(blob)).schema.names[0] == "row"
    assert decode_table(blob, frame=FRAME)["m0"].rows.tolist() == [1, 2, 4]


def test_int8_round_trip_within_half_a_quantum_and_a_quarter_of_float32():
    frame = np.arange(2000)
    table = {"m0": _post(frame, 0, scale=3.0)}
    blob = encode_table(table, int8=True, frame=frame)
    assert len(blob) < len(encode_table(table, frame=frame)) / 3.5
    back = decode_table(blob, frame=frame)["m0"]
    for got, want in ((back.mu, table["m0"].mu), (back.logvar, table["m0"].logvar)):
        half_quantum = np.exp2(np.ceil(np.log2(np.abs(want).max(0) / 127))) / 2
        assert (np.abs(got - want) <= half_quantum).all()


def test_increments_add_to_the_receivers_values():
    base_mu, base_lv = np.ones((3, D), np.float32), np.zeros((3, D), np.float32)
    inc = _post(FRAME[:3], 2, scale=0.1)
    blob = encode_table({"m0": _post(FRAME[3:5])}, int8=True, frame=FRAME,
                        deltas={"m0": inc})
    got = decode_table(blob, frame=FRAME, base=lambda m, rows: (base_mu, base_lv))["m0"]
    assert sorted(got.rows.tolist()) == FRAME[:5].tolist()
    found, pos = got.lookup(FRAME[:3])
    assert np.abs(got.mu[pos] - (1 + inc.mu)).max() <= 0.1 * 4 / 127
    with pytest.raises(PosteriorError, match="receiver holds no values"):
        decode_table(blob, frame=FRAME)
    with pytest.raises(PosteriorError, match="receiver holds no values"):
        decode_table(blob, frame=FRAME, base=lambda m, rows: None)


def _mu_lv(n, dtype=np.float32):
    return np.zeros((n, D), dtype), np.zeros((n, D), dtype)


def _zeros(m, rows):
    """A receiver's values: zeros for every row."""
    return _mu_lv(len(rows))


@pytest.mark.parametrize("batches,dtype,frame,match", [
    ([({}, *_mu_lv(len(FRAME)))], F32, None, "no window frame"),
    ([({}, *_mu_lv(4))], F32, FRAME, r"4 rows without a row column or bitmap; the "
                                     r"window's frame has 30"),
    ([({b"mmvm.present": b"\xff"}, *_mu_lv(8))], F32, FRAME, "bitmap of 1 bytes"),
    ([({b"mmvm.present": b"\x01\x00\x00\xc0"}, *_mu_lv(1))], F32, FRAME,
     "bits set past the frame"),
    ([({b"mmvm.present": b"\x03\x00\x00\x00"}, *_mu_lv(1))], F32, FRAME,
     "bitmap marks 2 rows, the batch has 1"),
    ([({}, *_mu_lv(len(FRAME), np.int8))], pa.int8(), FRAME, "need 16 scale exponents"),
    ([({b"mmvm.exp": bytes([100] * 16)}, *_mu_lv(len(FRAME), np.int8))], pa.int8(),
     FRAME, r"exponent outside"),
    ([({b"mmvm.exp": bytes(16)}, *_mu_lv(len(FRAME)))], F32, FRAME, "exponents on non-int8"),
    ([({b"mmvm.delta": b"yes"}, *_mu_lv(len(FRAME)))], F32, FRAME, "increment flag"),
    ([({}, *_mu_lv(len(FRAME)))] * 2, F32, FRAME, "appears twice"),
    ([({}, *_mu_lv(len(FRAME))), ({b"mmvm.delta": b"1"}, *_mu_lv(len(FRAME)))], F32,
     FRAME, "both as a value and an increment"),
])
def test_malformed_implied_rows_int8_and_increments(batches, dtype, frame, match):
    blob = _framed_blob(batches, dtype=dtype)
    with pytest.raises(PosteriorError, match=f"from site b.*{match}"):
        decode_table(blob, frame=frame, sender="site b", base=_zeros)


def test_a_framed_table_refuses_more_rows_than_the_frame():
    blob = _framed_blob([({}, *_mu_lv(40))])
    with pytest.raises(PosteriorError, match="40 rows, more than the 30 expected"):
        decode_table(blob, frame=FRAME)


def test_random_corruption_of_framed_int8_tables_raises_posterior_error_only():
    blob = encode_table({"m0": _post(FRAME[::3]), "m1": _post(FRAME)}, int8=True,
                        frame=FRAME, deltas={"m0": _post(FRAME[1::3], 3, scale=0.1)})
    rng = random.Random(5)
    refused = 0
    for _ in range(300):
        bad = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        try:
            table = decode_table(bytes(bad), frame=FRAME, latent_dim=D, n_rows=60,
                                 base=_zeros)
        except PosteriorError:
            refused += 1
            continue
        for p in table.values():  # a byte of the values changed: still a table of it
            assert p.mu.shape == p.logvar.shape == (len(p.rows), D)
            assert set(p.rows.tolist()) <= set(FRAME.tolist())
    assert 0 < refused < 300  # the headers' bytes are refused, the values' need not be


def test_select_rows_takes_wanted_rows_in_any_order():
    p = Posteriors(np.array([2, 5, 7, 9]), np.arange(8.0).reshape(4, 2).astype(np.float32),
                   np.zeros((4, 2), np.float32))
    got = select_rows({"m": p, "own": p}, np.array([9, 2, 4]), exclude=["own"])
    assert list(got) == ["m"] and got["m"].rows.tolist() == [2, 9]
    assert got["m"].mu.tolist() == [[0.0, 1.0], [6.0, 7.0]]
    assert select_rows({"m": p}, np.zeros(0, np.int64)) == {}
