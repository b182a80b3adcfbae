"""Request/reply dicts <-> Flower RecordDicts (both apps speak through this).

Scalars and bytes go into one ConfigRecord ``body``; lists and dicts as JSON there;
weight dicts ``{modality: {parameter: ndarray}}`` (keys ``weights`` and ``model``) as
one ArrayRecord per modality, named ``<key>/<modality>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

ARRAY_KEYS = ("weights", "model")
_JSON = "json:"


def to_record(d: Mapping) -> RecordDict:
    body, rd = {}, RecordDict()
    for k, v in d.items():
        if k in ARRAY_KEYS:
            for m, arrays in v.items():
                rd[f"{k}/{m}"] = ArrayRecord(array_dict={
                    n: Array.from_numpy_ndarray(np.ascontiguousarray(a))
                    for n, a in arrays.items()})
        elif isinstance(v, (bytes, bool, int, float, str)):
            body[k] = v
        else:
            body[_JSON + k] = json.dumps(v)
    rd["body"] = ConfigRecord(body)
    return rd


def from_record(rd: RecordDict) -> dict:
    out: dict = {}
    for k, v in rd["body"].items():
        if k.startswith(_JSON):
            out[k[len(_JSON):]] = json.loads(v)
        else:
            out[k] = v
    for name in rd.keys():
        if "/" in name:
            key, m = name.split("/", 1)
            out.setdefault(key, {})[m] = {n: a.numpy() for n, a in rd[name].items()}
    return out
