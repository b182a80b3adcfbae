"""Results files are strict JSON: a metric that was not measured is null, not NaN."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mmvm.jsonfile import finite, json_bytes
from mmvm.reporting.runs import number
from tests.support.strict_json import strict


def test_non_finite_numbers_are_written_as_null_anywhere_in_the_document():
    doc = {"total": math.nan, "pairs": {"m0->m1": 1.5, "m1->m0": math.inf},
           "matrix": [[math.nan, 0.5], (0.25, -math.inf)], "n": 3, "ok": True,
           "why": None, "name": "site-a"}
    with pytest.raises(ValueError, match="NaN"):  # what Python's json writes
        strict(json.dumps(doc).encode())
    got = strict(json_bytes(doc))
    assert got == {"total": None, "pairs": {"m0->m1": 1.5, "m1->m0": None},
                   "matrix": [[None, 0.5], [0.25, None]], "n": 3, "ok": True,
                   "why": None, "name": "site-a"}
    assert number(got["total"]) is None and number(got["pairs"]["m0->m1"]) == 1.5


def test_numpy_values_are_plain_numbers_and_other_types_their_text(tmp_path):
    doc = {"acc": np.float32(0.75), "n": np.int64(7), "bad": np.float64("nan"),
           "rows": np.array([1.0, np.nan]), "path": tmp_path}
    assert finite(doc)["acc"] == 0.75 and type(finite(doc)["n"]) is int
    got = strict(json_bytes(doc, indent=None))
    assert got == {"acc": 0.75, "n": 7, "bad": None, "rows": [1.0, None],
                   "path": str(tmp_path)}
    assert b"\n" not in json_bytes(doc, indent=None)


def test_files_written_before_with_nan_still_read_as_not_measured():
    """The readers of results take NaN (older files) and null (these) alike."""
    old, new = json.loads('{"probe": NaN}'), strict(json_bytes({"probe": math.nan}))
    assert number(old["probe"]) is None and number(new["probe"]) is None


def test_tensors_and_non_finite_keys_are_plain_json():
    import torch

    doc = {"loss": torch.tensor(float("nan")), "mu": torch.tensor([0.5, float("inf")]),
           float("nan"): 1, 0.5: 2}
    assert strict(json_bytes(doc)) == {"loss": None, "mu": [0.5, None], "nan": 1,
                                       "0.5": 2}
