"""wire.records: every federation message survives Flower's wire encoding, and a
malformed one is refused before a handler sees it."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from mmvm.federation.messages import (
    AlignReply,
    AlignRequest,
    AttachReply,
    AttachRequest,
    ConfirmReply,
    ConfirmRequest,
    DescribeReply,
    DescribeRequest,
    EvaluateReply,
    EvaluateRequest,
    HeldOutReply,
    HeldOutRequest,
    MessageError,
    ResumeReply,
    ResumeRequest,
    UnmaskReply,
    UnmaskRequest,
    WindowReply,
    WindowRequest,
)
from wire.records import (
    FLOWER_TYPES,
    flower_type,
    reply_from_record,
    request_from_record,
    to_record,
)

W = {"m0": {"encoders.m0.w": np.arange(6, dtype=np.float32).reshape(2, 3),
            "encoders.m0.b": np.zeros(0, dtype=np.float32)},
     "m1": {"__weight__": np.array([7], dtype=np.int64)}}
REQUESTS = [DescribeRequest(), AlignRequest(sealed={"a": b"\x00\x01", "b": b""}),
            AttachRequest(n=5, rows=[4, 0, 2], float16=True,
                          plan={"batch_size": 2, "seed": 1, "epochs": 1},
                          shared={"m0": ["a", "b"]}, peers={"b": {"rows": [0]}},
                          delta_tol=0.5),
            WindowRequest(window=3, posteriors={"server": b"arrow"}, weights=W),
            ConfirmRequest(window=2, groups={"m0": {"survivors": ["a", "b", "c"],
                                                    "dropped": ["d"]}}),
            UnmaskRequest(window=2, groups={"m0": {"survivors": ["a", "b"], "dropped": []}},
                          shares={"b": b"env"}, confirmations={"c": b"view"}),
            ResumeRequest(run="123"), HeldOutRequest(weights=W),
            EvaluateRequest(weights=W, collect=True, posteriors={"server": b"\x02"},
                            draw=False)]
REPLIES = [DescribeReply(site="a", modalities=["m0"], n=2, labelled=True,
                         identifiers=["x", "y"]),
           DescribeReply(site="a", modalities=["m0", "m1"], n=0, labelled=False,
                         sealed={"b": b"env"}),
           AlignReply(identifiers=["p1", "p2"]), AlignReply(origin="a", tags=["ab" * 32]),
           AttachReply(posteriors={}),
           WindowReply(metrics={"rec_nll": 1.5, "rows": 3}, posteriors={"b": b"e"},
                       weights=W, shares={"b": b"s"}),
           ConfirmReply(sealed={"b": b"view", "c": b"view"}),
           UnmaskReply(shares={"m0": {"b": "AAE="}}, seeds={"m0": {}}),
           ResumeReply(site="a", phase="attached", window=4, unmasked=3),
           ResumeReply(site="a", phase="attached", window=4, unmasked=3, proof="sig",
                       view={"window": 4, "groups": {"m0": {"survivors": ["a", "b", "c"],
                                                           "dropped": ["d"]}}}),
           HeldOutReply(identifiers=["s1", "s2"], posteriors={"server": b"\x03"}),
           HeldOutReply(reason="no test file"),
           EvaluateReply(site="a", modalities=["m0"], metrics={"probe/m0": 0.5}, model=W)]


def _over_the_wire(rd: RecordDict) -> RecordDict:
    return recorddict_from_proto(recorddict_to_proto(rd))


def _equal(a, b) -> None:
    assert type(a) is type(b)
    for k, v in vars(a).items():
        w = vars(b)[k]
        if k in ("weights", "model"):
            assert v.keys() == w.keys()
            for m in v:
                assert v[m].keys() == w[m].keys()
                for n in v[m]:
                    assert v[m][n].dtype == w[m][n].dtype
                    np.testing.assert_array_equal(v[m][n], w[m][n])
        else:
            assert v == w, k


@pytest.mark.parametrize("msg", REQUESTS, ids=lambda m: type(m).__name__)
def test_requests_round_trip(msg):
    _equal(request_from_record(msg.kind, _over_the_wire(to_record(msg))), msg)


@pytest.mark.parametrize("msg", REPLIES, ids=lambda m: type(m).__name__)
def test_replies_round_trip(msg):
    _equal(reply_from_record(msg.kind, _over_the_wire(to_record(msg))), msg)


def test_every_kind_has_one_flower_message_type():
    assert {flower_type(m) for m in REQUESTS} == set(FLOWER_TYPES.values())
    assert len(set(FLOWER_TYPES.values())) == len(FLOWER_TYPES)


def test_the_client_app_answers_every_kind():
    """A kind the ClientApp has no handler for would fail at the site only in a run
    that sends it (the confirm round: only when a holder dropped)."""
    from client.app import app

    handled = set(app._registered_funcs)  # Flower 1.41: "category.action"
    assert {t if "." in t else f"{t}.default" for t in FLOWER_TYPES.values()} <= handled


def _body(rd: RecordDict, **changes) -> RecordDict:
    body = dict(rd["body"].items())
    body.update(changes)
    out = RecordDict({k: rd[k] for k in rd.keys() if k != "body"})
    out["body"] = ConfigRecord({k: v for k, v in body.items() if v is not None})
    return out


@pytest.mark.parametrize("change,match", [
    ({"window": "3"}, r"window request: field 'window' must be a int, got str"),
    ({"window": True}, r"field 'window' must be a int, got bool"),
    ({"window": None}, r"window request: missing field 'window'"),
    ({"extra": 1}, r"window request: unknown fields \['extra'\]"),
])
def test_wrong_field_types_and_names_are_refused(change, match):
    rd = to_record(WindowRequest(window=3))
    with pytest.raises(MessageError, match=match):
        request_from_record("window", _body(rd, **change))


def test_malformed_records_are_refused():
    rd = to_record(AttachRequest(n=2, rows=[0, 1], float16=False, plan={}))
    with pytest.raises(MessageError, match=r"field 'rows' must be a list of int"):
        request_from_record("attach", _body(rd, rows=["0", "1"]))
    with pytest.raises(MessageError, match=r"field 'plan' must be a JSON object"):
        request_from_record("attach", _body(rd, plan="[1, 2]"))
    with pytest.raises(MessageError, match=r"field 'plan' is not JSON"):
        request_from_record("attach", _body(rd, plan="{nope"))
    rd["blobs/unknown"] = ConfigRecord({"a": b"x"})
    with pytest.raises(MessageError, match=r"unknown records \['blobs/unknown'\]"):
        request_from_record("attach", rd)
    bad = to_record(WindowRequest(window=0))
    bad["blobs/posteriors"] = ConfigRecord({"a": "text, not bytes"})
    with pytest.raises(MessageError, match=r"blobs/posteriors must map names to bytes"):
        request_from_record("window", bad)
    with pytest.raises(MessageError, match=r"no 'body' record"):
        reply_from_record("window", RecordDict())


def test_json_integers_beyond_64_bits_are_refused_before_a_site_keeps_them(tmp_path):
    """A site stores plan arguments and unmask views in its state file; torch's
    weights-only loader refuses a ~1000-digit integer, so a server that sent one
    (in a field the site ignores, e.g. ``k`` of a ``step`` plan) would leave the
    site's state unloadable. The largest 64-bit integers pass and load back."""
    import io

    import torch

    rd = to_record(AttachRequest(n=2, rows=[0, 1], float16=False, plan={}))
    for huge in (2 ** 63, -(2 ** 63) - 1, 10 ** 1000):
        with pytest.raises(MessageError, match=r"field 'plan' is not JSON of 64-bit "
                                               r"numbers \(an integer of \d+ digits"):
            request_from_record("attach", _body(rd, plan=f'{{"k": {huge}}}'))
    edge = request_from_record("attach", _body(rd, plan=f'{{"k": {2 ** 63 - 1}, '
                                                       f'"seed": {-(2 ** 63)}}}'))
    buf = io.BytesIO()
    torch.save({"plan_args": edge.plan}, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["plan_args"] == edge.plan


def test_json_nested_deeper_than_the_stack_is_a_message_error():
    """A reply or request whose JSON field nests 200,000 lists (a few hundred KB) made
    json.loads raise RecursionError, a traceback that ended the ServerApp instead of
    counting as the sender's failure."""
    rd = to_record(AttachRequest(n=2, rows=[0, 1], float16=False, plan={}))
    deep = '{"a": ' + "[" * 200_000 + "]" * 200_000 + "}"
    with pytest.raises(MessageError, match=r"field 'plan' is JSON nested too deep"):
        request_from_record("attach", _body(rd, plan=deep))


def test_array_records_that_are_not_numeric_arrays_are_refused():
    """A site's weights arrive as Flower Arrays; bytes that are not a numpy array, an
    Array of another kind, a record of another type, or strings are refused as a
    MessageError naming the record and parameter (the server names the site)."""
    from flwr.app import Array, ArrayRecord

    good = to_record(WindowReply(weights={"m0": {"w": np.ones(3, np.float32)}}))
    assert reply_from_record("window", good).weights["m0"]["w"].tolist() == [1, 1, 1]
    cases = [
        (ArrayRecord({"w": Array(dtype="float32", shape=(3,), stype="numpy.ndarray",
                                 data=b"garbage")}), r"arrays/weights/m0/w is not a numpy"),
        (ConfigRecord({"w": 1.0}), r"arrays/weights/m0 must be an array record, got "
                                   r"ConfigRecord"),
        (ArrayRecord({"w": Array(np.array(["a", "b"]))}),
         r"arrays/weights/m0/w must be a numeric array, got <U1"),
    ]
    for record, match in cases:
        bad = to_record(WindowReply(weights={"m0": {"w": np.ones(3, np.float32)}}))
        bad["arrays/weights/m0"] = record
        with pytest.raises(MessageError, match=match):
            reply_from_record("window", bad)


def test_weights_keep_their_shape_and_dtype_through_flower_arrays():
    """A 0-d tensor (a BatchNorm's batch count) must not come back as shape (1,), nor
    a masked update lose its uint64: the server checks both against the model."""
    weights = {"m0": {"count": np.array(7, np.int64), "w": np.ones((2, 3), np.float32),
                      "masked": np.arange(4, dtype=np.uint64).reshape(2, 2),
                      "weight": np.array([5], np.uint64)}}
    back = reply_from_record("window", to_record(WindowReply(weights=weights))).weights
    for n, a in weights["m0"].items():
        got = back["m0"][n]
        assert got.shape == a.shape and got.dtype == a.dtype and np.array_equal(got, a), n


def test_arrays_in_another_byte_order_arrive_in_this_machines():
    """A big-endian array holds the same values, passes every check, and torch refuses
    it (``ValueError``) where the server assembles the model: one site's evaluate
    reply ended a run after its last window. Decoded, it is in native byte order."""
    import torch

    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    weights = {"m0": {"w": values.astype(">f4"), "n": np.array(7, ">i8")}}
    back = reply_from_record("evaluate", to_record(EvaluateReply(
        site="a", modalities=["m0"], metrics={}, model=weights))).model["m0"]
    assert back["w"].dtype == np.float32 and back["n"].dtype == np.int64
    assert np.array_equal(back["w"], values) and int(back["n"]) == 7
    assert torch.as_tensor(back["w"]).sum().item() == 15.0


def test_json_text_beyond_its_fields_cap_is_refused_before_it_is_parsed(monkeypatch):
    """Parsing JSON costs ~6x its text (~23x for a list of empty objects): a site's
    2 MB of metrics (or unmask shares) is refused by size, and JSON sent as bytes
    (Flower carries bytes too, and json.loads parses them) is refused for its type,
    both before anything is parsed."""
    import wire.records as records

    def no_parse(*a, **k):
        raise AssertionError("parsed before the size check")

    big = '{"a": "' + "x" * 2_000_000 + '"}'
    monkeypatch.setattr(records.json, "loads", no_parse)
    for kind, msg, name in [("evaluate", EvaluateReply(site="a", modalities=[]), "metrics"),
                            ("unmask", UnmaskReply(), "shares")]:
        with pytest.raises(MessageError, match=rf"field '{name}' holds 2000009 characters "
                                               rf"of JSON, more than the 1048576"):
            reply_from_record(kind, _body(to_record(msg), **{name: big}))
        with pytest.raises(MessageError, match=rf"field '{name}' must be JSON text, got "
                                               rf"bytes"):
            reply_from_record(kind, _body(to_record(msg), **{name: big.encode()}))
    with pytest.raises(MessageError, match="field 'plan' must be JSON text, got bytes"):
        request_from_record("attach", _body(to_record(AttachRequest(
            n=2, rows=[0, 1], float16=False, plan={})), plan=b"{}"))
