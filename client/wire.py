"""Request/reply dicts <-> Flower RecordDicts (both apps speak through this).

Scalars and bytes go into one ConfigRecord ``body``; lists and dicts as JSON there;
weight dicts ``{modality: {parameter: ndarray}}`` (keys ``weights``, ``model`` and,
in secure mode, ``masked``) as one ArrayRecord per modality, named
``<key>/<modality>``; maps of bytes (secure mode's ``sealed`` envelopes,
``{site: blob}``) as one ConfigRecord named ``bytes:<key>``.

``append_dump``/``read_dump``: a test-only log of every message content in Flower's
wire encoding (protobuf), to check what the server handled.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

ARRAY_KEYS = ("weights", "model", "masked")
_JSON = "json:"
_BYTES = "bytes:"


def _is_bytes_map(v) -> bool:
    return isinstance(v, Mapping) and bool(v) and all(
        isinstance(b, (bytes, bytearray)) for b in v.values())


def to_record(d: Mapping) -> RecordDict:
    body, rd = {}, RecordDict()
    for k, v in d.items():
        if k in ARRAY_KEYS:
            for m, arrays in v.items():
                rd[f"{k}/{m}"] = ArrayRecord(array_dict={
                    n: Array.from_numpy_ndarray(np.ascontiguousarray(a))
                    for n, a in arrays.items()})
        elif _is_bytes_map(v):
            rd[_BYTES + k] = ConfigRecord({str(n): bytes(b) for n, b in v.items()})
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
        if name.startswith(_BYTES):
            out[name[len(_BYTES):]] = dict(rd[name].items())
        elif "/" in name:
            key, m = name.split("/", 1)
            out.setdefault(key, {})[m] = {n: a.numpy() for n, a in rd[name].items()}
    return out


def wire_bytes(rd: RecordDict) -> bytes:
    """The content as Flower serializes it for the network (protobuf)."""
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(rd).SerializeToString()


def append_dump(path: str | Path, stage: str, direction: str, node: str,
                rd: RecordDict) -> None:
    """Append one message content (test-only audit log of the server)."""
    head = json.dumps({"stage": stage, "dir": direction, "node": node}).encode()
    body = wire_bytes(rd)
    with open(path, "ab") as fh:
        fh.write(struct.pack(">II", len(head), len(body)) + head + body)


def read_dump(path: str | Path) -> list[tuple[dict, bytes]]:
    """Records of :func:`append_dump`: (header, protobuf bytes)."""
    data, out, pos = Path(path).read_bytes(), [], 0
    while pos < len(data):
        nh, nb = struct.unpack_from(">II", data, pos)
        pos += 8
        head = json.loads(data[pos:pos + nh])
        pos += nh
        out.append((head, data[pos:pos + nb]))
        pos += nb
    return out


def parse_wire(body: bytes) -> dict:
    """Protobuf bytes of :func:`wire_bytes` back to the dict."""
    from flwr.common.serde import recorddict_from_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    proto = ProtoRecordDict()
    proto.ParseFromString(body)
    return from_record(recorddict_from_proto(proto))
