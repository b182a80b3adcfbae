"""mmvm.data.value_ranges: each modality's values as the model sees them, against the
range its likelihood and network expect (warnings: training runs all the same)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmvm.config import ModalitySpec
from mmvm.data.store import write_site_table
from mmvm.data.value_ranges import (
    expected_range,
    file_ranges,
    range_warnings,
    unscaled_pixels,
)

IDS = [f"s{i}" for i in range(4)]


def _spec(name="x", kind="vector", shape=(3,), likelihood="laplace", **kw):
    return ModalitySpec(name=name, kind=kind, shape=tuple(shape), likelihood=likelihood,
                        **kw)


@pytest.mark.parametrize("spec, expected", [
    (_spec(kind="image", shape=(1, 28, 28)), (0.0, 1.0)),
    (_spec(likelihood="bernoulli"), (0.0, 1.0)),
    (_spec(likelihood="poisson"), (0.0, math.inf)),
    (_spec(kind="tokens", shape=(32,), likelihood="categorical", classes=7), (0.0, 6.0)),
    (_spec(likelihood="gaussian"), None),
    (_spec(likelihood="mse"), None),
])
def test_expected_range_follows_likelihood_and_kind(spec, expected):
    got = expected_range(spec)
    assert (got[:2] if got else None) == expected


def test_file_ranges_are_value_over_scale_from_the_statistics(tmp_path):
    img = np.zeros((4, 1, 28, 28), np.uint8)
    img[2, 0, 3, 3] = 200
    vec = np.array([[-4.0, 0, 1], [2, 2, 2], [0, 0, 0], [6, 1, 1]], np.float32)
    path = write_site_table(tmp_path / "a.parquet", IDS, {"img": img, "vec": vec}, None,
                            {}, scales={"img": 1.0, "vec": 2.0}, row_group_size=2)
    assert file_ranges(path) == {"img": (0.0, 200.0), "vec": (-2.0, 3.0)}
    # a file written without statistics: nothing is guessed
    bare = tmp_path / "bare.parquet"
    table = pq.read_table(path)
    pq.write_table(table, bare, write_statistics=False)
    assert file_ranges(bare) == {}


def test_uint8_pixels_stored_with_scale_one_are_named_with_the_fix(tmp_path):
    img = np.full((4, 1, 28, 28), 255, np.uint8)
    path = write_site_table(tmp_path / "a.parquet", IDS, {"img": img}, None, {},
                            scales={"img": 1.0})
    spec = _spec("img", kind="image", shape=(1, 28, 28))
    assert range_warnings([spec], path) == [
        f"{path}: modality 'img' holds values 255..255 (stored value / the file's scale), "
        f"outside 0..1: kind 'image' takes pixels scaled to 0..1 (image decoders end in "
        f"a sigmoid); the file stores uint8 with scale 1: write it with scale 255 (the "
        f"default for uint8), as mmvm data prepare does"]
    fine = write_site_table(tmp_path / "b.parquet", IDS, {"img": img}, None, {})
    assert range_warnings([spec], fine) == []  # uint8's default scale: 0..1


@pytest.mark.parametrize("values, spec, said", [
    ([0.0, 2.0], _spec(likelihood="bernoulli"),
     "holds values 0..2 (stored value / the file's scale), outside 0..1: likelihood "
     "'bernoulli' takes targets in 0..1; rescale the data"),
    ([-1.0, 3.0], _spec(likelihood="poisson"),
     "holds values -1..3 (stored value / the file's scale), outside 0..inf: likelihood "
     "'poisson' takes counts >= 0"),
    ([0.0, 9.0], _spec(kind="tokens", shape=(32,), likelihood="categorical", classes=5),
     "outside 0..4: token ids 0..4 (classes = 5)"),
])
def test_values_outside_the_likelihoods_range_are_named(tmp_path, values, spec, said):
    x = np.zeros((4, spec.shape[0]), np.float32)
    x[0, 0], x[1, 1] = values
    path = write_site_table(tmp_path / "a.parquet", IDS, {"x": x}, None, {})
    lines = range_warnings([spec], path)
    assert len(lines) == 1 and lines[0].startswith(f"{path}: modality 'x' ")
    assert said in lines[0]


def test_a_location_likelihood_takes_any_range_but_far_from_0_is_warned_of(tmp_path):
    """No range is wrong for mse/gaussian/laplace, but lab values in clinical units
    made the first loss NaN: values beyond +-100 are warned of, with the fix."""
    x = np.full((4, 3), -1e6, np.float32)
    path = write_site_table(tmp_path / "a.parquet", IDS, {"x": x}, None, {})
    assert range_warnings([_spec(likelihood="mse")], path) == [
        f"{path}: modality 'x' holds values -1e+06..-1e+06, far from 0: inputs and "
        f"mse/gaussian/laplace targets that large make the first loss overflow (NaN at step 0, "
        f"whatever the learning rate) or one column outweigh the rest; prepare it with "
        f"--standardize (mmvm data prepare table or arrays: each column z-scored by the "
        f"training split's mean and std; whole-number counts under a poisson likelihood "
        f"may stay as they are)"]
    near = write_site_table(tmp_path / "b.parquet", IDS, {"x": x / 1e4}, None, {})
    assert range_warnings([_spec(likelihood="gaussian")], near) == []  # -100: not beyond


def test_fp16_mixed_precision_names_values_beyond_float16(tmp_path):
    x = np.zeros((4, 3), np.float32)
    x[3, 2] = 1e5
    path = write_site_table(tmp_path / "a.parquet", IDS, {"x": x}, None, {})
    assert range_warnings([_spec()], path, amp="bf16")[0].endswith("may stay as they are)")
    assert range_warnings([_spec()], path, amp="fp16")[1:] == [
        f"{path}: modality 'x' holds values 0..1e+05, beyond float16's 65504: train.amp "
        f"= 'fp16' makes them inf; use amp = 'bf16' or 'off', or write the data with a "
        f"larger scale"]


def test_without_a_config_only_uint8_with_scale_one_is_named():
    assert unscaled_pixels("m0", {"dtype": "uint8", "scale": 1.0}, 255) .startswith(
        "modality 'm0' is uint8 stored with scale 1: the model sees values 0..255")
    assert unscaled_pixels("m0", {"dtype": "uint8", "scale": 1.0}, 1) is None  # 0/1 masks
    assert unscaled_pixels("m0", {"dtype": "uint8", "scale": 255.0}, 1) is None
    assert unscaled_pixels("m0", {"dtype": "float32", "scale": 1.0}, 255) is None


def test_rates_under_a_poisson_likelihood_are_named_and_counts_are_not(tmp_path):
    """Walkthrough: one lab saved smoothed firing rates in Hz, its config said
    poisson, and neither check said a word (only negative values were caught)."""
    counts = np.array([[0, 3, 1], [2, 0, 7], [1, 1, 1], [0, 0, 4]], np.float32)
    spec = _spec("rat", likelihood="poisson")
    whole = write_site_table(tmp_path / "counts.parquet", IDS, {"rat": counts}, None, {})
    assert range_warnings([spec], whole) == []
    rates = counts * 2
    rates[3, 1] = 37.25
    path = write_site_table(tmp_path / "rates.parquet", IDS, {"rat": rates}, None, {})
    (line,) = range_warnings([spec], path)
    assert "modality 'rat' holds values that are not whole numbers (37.25 in sample " \
           "'s3'; 1 of the first 4 rows): likelihood 'poisson' models counts" in line
    assert "give the binned spike counts" in line
