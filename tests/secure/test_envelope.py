"""Envelopes: round trip, and a distinct SecurityError for each attack."""

from __future__ import annotations

import pytest

from mmvm.secure.envelope import ReplayGuard, open_envelope, peek_header, seal
from mmvm.secure.errors import (
    ContextMismatchError,
    MalformedEnvelopeError,
    ReplayError,
    SecurityError,
    TamperedEnvelopeError,
    UnexpectedSenderError,
    WrongRecipientError,
)

PAYLOAD = b"posterior mu/logvar of sample p-0042 " * 20


def _seal(keys, pubs, src="a", dst="b", **kw):
    kw = {"run_id": "run1", "round": 3, "counter": 0, **kw}
    return seal(keys[src], pubs[dst], PAYLOAD, **kw)


def test_roundtrip_hides_payload(sites):
    keys, pubs = sites
    blob = _seal(keys, pubs)
    assert PAYLOAD[:16] not in blob
    assert len(blob) < len(PAYLOAD) + 100
    out = open_envelope(keys["b"], pubs["a"], blob, run_id="run1", guard=ReplayGuard())
    assert out == PAYLOAD
    assert open_envelope(keys["b"], pubs["a"], blob, run_id="run1",
                         expected_round=3, expected_counter=0,
                         kind="posterior") == PAYLOAD
    # two seals of the same message differ (fresh salt -> fresh key)
    assert _seal(keys, pubs) != blob


@pytest.mark.parametrize("where", ["salt", "ciphertext", "tag", "round"])
def test_tampering_is_detected(sites, where):
    keys, pubs = sites
    blob = bytearray(_seal(keys, pubs))
    header_len = len(blob) - len(PAYLOAD) - 16
    pos = {"salt": header_len - 1, "ciphertext": header_len + 5,
           "tag": len(blob) - 1, "round": header_len - 16 - 9}[where]
    blob[pos] ^= 0x01
    with pytest.raises(TamperedEnvelopeError, match="modified in transit"):
        open_envelope(keys["b"], pubs["a"], bytes(blob), run_id="run1",
                      guard=ReplayGuard())


def test_wrong_recipient(sites):
    keys, pubs = sites
    blob = _seal(keys, pubs)
    with pytest.raises(WrongRecipientError, match="addressed to 'b', not to 'c'"):
        open_envelope(keys["c"], pubs["a"], blob, run_id="run1", guard=ReplayGuard())


def test_unexpected_sender_and_forged_sender(sites):
    keys, pubs = sites
    with pytest.raises(UnexpectedSenderError, match="claims sender 'c'"):
        open_envelope(keys["b"], pubs["a"], _seal(keys, pubs, src="c"),
                      run_id="run1", guard=ReplayGuard())
    # c seals to b and rewrites the header's sender to "a": authentication fails
    forged = _seal(keys, pubs, src="c").replace(
        b"\x00\x01c\x00\x01b", b"\x00\x01a\x00\x01b"
    )
    assert peek_header(forged).sender == "a"
    with pytest.raises(TamperedEnvelopeError):
        open_envelope(keys["b"], pubs["a"], forged, run_id="run1", guard=ReplayGuard())


def test_replay_and_stale_rounds(sites, tmp_path):
    keys, pubs = sites
    guard = ReplayGuard()
    r3c0, r3c1 = _seal(keys, pubs, counter=0), _seal(keys, pubs, counter=1)
    r4 = _seal(keys, pubs, round=4)
    opened = lambda blob, g: open_envelope(keys["b"], pubs["a"], blob,  # noqa: E731
                                           run_id="run1", guard=g)
    assert opened(r3c1, guard) == PAYLOAD  # any order within a round
    assert opened(r3c0, guard) == PAYLOAD
    with pytest.raises(ReplayError, match="counter 0 was already accepted"):
        opened(r3c0, guard)
    assert opened(r4, guard) == PAYLOAD
    # the guard survives a process restart (a SuperNode runs one per message)
    guard.save(tmp_path / "guard.json")
    restored = ReplayGuard.load(tmp_path / "guard.json")
    with pytest.raises(ReplayError, match="older than round 4"):
        opened(_seal(keys, pubs, round=3, counter=7), restored)
    with pytest.raises(ReplayError, match="expected round 5"):
        open_envelope(keys["b"], pubs["a"], r4, run_id="run1", expected_round=5)


def test_context_and_malformed(sites):
    keys, pubs = sites
    blob = _seal(keys, pubs)
    with pytest.raises(ContextMismatchError, match="run 'run1', not to run 'run2'"):
        open_envelope(keys["b"], pubs["a"], blob, run_id="run2", guard=ReplayGuard())
    with pytest.raises(ContextMismatchError, match="kind"):
        open_envelope(keys["b"], pubs["a"], blob, run_id="run1", guard=ReplayGuard(),
                      kind="weights")
    for bad in (b"", b"garbage", blob[:30]):
        with pytest.raises(MalformedEnvelopeError):
            open_envelope(keys["b"], pubs["a"], bad, run_id="run1", guard=ReplayGuard())
    with pytest.raises(ValueError, match="ReplayGuard or an expected_round"):
        open_envelope(keys["b"], pubs["a"], blob, run_id="run1")


def test_errors_are_distinct_security_errors():
    classes = [MalformedEnvelopeError, WrongRecipientError, UnexpectedSenderError,
               ContextMismatchError, TamperedEnvelopeError, ReplayError]
    assert all(issubclass(c, SecurityError) for c in classes)
    assert len(set(classes)) == len(classes)
    assert not any(issubclass(a, b) for a in classes for b in classes if a is not b)
