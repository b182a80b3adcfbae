"""Typed federation messages <-> Flower ``RecordDict``s: the one codec both apps use.

Each message field declares how it travels (:mod:`mmvm.federation.messages`):

- ``value`` fields go into one ``ConfigRecord`` named ``body`` (Flower's own types:
  str, int, float, bool, bytes and lists of str / int);
- ``json`` fields into ``body`` as JSON text;
- ``blobs`` fields (``{name: bytes}``) into a ``ConfigRecord`` named ``blobs/<field>``;
- ``arrays`` fields (``{modality: {parameter: ndarray}}``) into one ``ArrayRecord``
  per modality named ``arrays/<field>/<modality>``.

Decoding is strict: an unknown record or body key, a missing field or a value of the
wrong type raises :class:`~mmvm.federation.messages.MessageError` naming the message
and the field, before any handler sees the message.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from mmvm.federation.messages import REPLIES, REQUESTS, MessageError

BODY = "body"
# Flower message types per kind: the ClientApp registers one handler for each
FLOWER_TYPES = {"describe": "query.describe", "align": "train.align",
                "attach": "train.attach", "window": "train.window",
                "confirm": "train.confirm", "unmask": "train.unmask",
                "resume": "query.resume", "heldout": "query.heldout",
                "evaluate": "evaluate"}


def flower_type(message) -> str:
    return FLOWER_TYPES[message.kind]


def to_record(message) -> RecordDict:
    rd, body = RecordDict(), {}
    for f in fields(message):
        v, wire = getattr(message, f.name), f.metadata["wire"]
        if wire == "value":
            body[f.name] = v
        elif wire == "json":
            body[f.name] = json.dumps(v)
        elif wire == "blobs" and v:
            rd[f"blobs/{f.name}"] = ConfigRecord({str(k): bytes(b) for k, b in v.items()})
        elif wire == "arrays":
            for m, arrays in v.items():
                rd[f"arrays/{f.name}/{m}"] = ArrayRecord(array_dict={
                    n: Array.from_numpy_ndarray(  # a 0-d array stays 0-d
                        np.ascontiguousarray(a).reshape(np.shape(a)))
                    for n, a in arrays.items()})
    rd[BODY] = ConfigRecord(body)
    return rd


def request_from_record(kind: str, rd: RecordDict):
    return _decode(REQUESTS[kind], rd, f"{kind} request")


def reply_from_record(kind: str, rd: RecordDict):
    return _decode(REPLIES[kind], rd, f"{kind} reply")


def _decode(cls, rd: RecordDict, what: str):
    specs = {f.name: f for f in fields(cls)}
    records = set(rd.keys())
    if BODY not in records:
        raise MessageError(f"{what}: no '{BODY}' record")
    body = dict(rd[BODY].items())
    stray = set(body) - {n for n, f in specs.items() if f.metadata["wire"] in ("value", "json")}
    if stray:
        raise MessageError(f"{what}: unknown fields {named(stray)}")
    values, used = {}, {BODY}
    for name, f in specs.items():
        wire = f.metadata["wire"]
        if wire in ("value", "json") and name in body:
            values[name] = _checked(f, body[name], what)
        elif wire == "blobs":
            values[name] = _blobs(rd, f"blobs/{name}", what)
            used.add(f"blobs/{name}")
        elif wire == "arrays":
            prefix = f"arrays/{name}/"
            mine = [r for r in records if r.startswith(prefix)]
            values[name] = {r[len(prefix):]: _arrays(rd, r, what) for r in mine}
            used.update(mine)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise MessageError(f"{what}: missing field {name!r}")
    unknown = records - used
    if unknown:
        raise MessageError(f"{what}: unknown records {named(unknown)}")
    return cls(**values)


def named(names, shown: int = 5, chars: int = 40) -> str:
    """Names a message brought, as an error quotes them: the first ``shown`` (sorted),
    each cut to ``chars``, and how many more: 64 field names of 16 KiB each made
    one refusal a megabyte, journalled at the site each time it was sent."""
    every = sorted(map(str, names))
    cut = [n if len(n) <= chars else f"{n[:chars]}..." for n in every[:shown]]
    return f"{cut}" + (f" and {len(every) - shown} more" if len(every) > shown else "")


def _arrays(rd: RecordDict, name: str, what: str) -> dict[str, np.ndarray]:
    """The numeric arrays of record ``name``; anything else is a MessageError that
    names the record and the parameter (not a traceback from deep in numpy)."""
    record = rd[name]
    if not isinstance(record, ArrayRecord):
        raise MessageError(f"{what}: {name} must be an array record, got "
                           f"{type(record).__name__}")
    out = {}
    for n, a in record.items():
        try:
            value = a.numpy()
        except Exception as err:  # numpy's and Flower's many ways to refuse bytes
            raise MessageError(f"{what}: {name}/{n} is not a numpy array "
                               f"({type(err).__name__})") from None
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
            raise MessageError(f"{what}: {name}/{n} must be a numeric array, got "
                               f"{getattr(value, 'dtype', type(value).__name__)}")
        # the same values in this machine's byte order: torch refuses any other one,
        # so a big-endian array that passed every check would fail the run where the
        # server assembles its model (security review of 2026-12-07)
        out[n] = value if value.dtype.isnative else value.astype(value.dtype.newbyteorder("="))
    return out


def _blobs(rd: RecordDict, name: str, what: str) -> dict[str, bytes]:
    if name not in rd.keys():
        return {}
    out = dict(rd[name].items())
    if not all(isinstance(v, bytes) for v in out.values()):
        raise MessageError(f"{what}: {name} must map names to bytes")
    return out


INT64 = (-(2 ** 63), 2 ** 63 - 1)


def _int64(text: str) -> int:
    """A JSON integer, refused beyond 64 bits: a site keeps parts of what the
    server sends (plan arguments, the unmask view) in its state file, and torch's
    ``weights_only`` loader refuses integers of ~600 digits and more, so one such
    number would leave the site's state unloadable."""
    value = int(text)
    if not INT64[0] <= value <= INT64[1]:
        raise ValueError(f"an integer of {len(text)} digits (beyond 64 bits)")
    return value


def _checked(f, value, what: str):
    if f.metadata["wire"] == "json":
        cap = f.metadata.get("max_chars")
        if not isinstance(value, str):  # json.loads takes bytes too, past the cap
            raise MessageError(f"{what}: field {f.name!r} must be JSON text, got "
                               f"{type(value).__name__}")
        if len(value) > cap:
            raise MessageError(f"{what}: field {f.name!r} holds {len(value)} characters "
                               f"of JSON, more than the {cap} it may")
        try:
            value = json.loads(value, parse_int=_int64)
        except ValueError as err:
            raise MessageError(f"{what}: field {f.name!r} is not JSON of 64-bit "
                               f"numbers ({str(err)[:80]})") from None
        except TypeError:
            raise MessageError(f"{what}: field {f.name!r} is not JSON") from None
        except RecursionError:  # nesting deeper than the interpreter's stack
            raise MessageError(f"{what}: field {f.name!r} is JSON nested too deep") from None
        if not isinstance(value, dict):
            raise MessageError(f"{what}: field {f.name!r} must be a JSON object")
        return value
    kind, of = f.metadata["type"], f.metadata["of"]
    ok = _is(value, kind)
    if ok and kind is list:
        ok = all(_is(v, of) for v in value)
    if not ok:
        expected = f"list of {of.__name__}" if kind is list else kind.__name__
        raise MessageError(f"{what}: field {f.name!r} must be a {expected}, got "
                           f"{type(value).__name__}")
    return float(value) if kind is float else value


def _is(value, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)
