"""Private id alignment: correct intersections, nothing readable at the relay."""

from __future__ import annotations

from hashlib import sha256

import pytest

from mmvm.secure import psi

IDS = {
    "a": [f"patient-{i:05d}" for i in range(0, 300)],
    "b": [f"patient-{i:05d}" for i in range(100, 450)],
    "c": [f"patient-{i:05d}" for i in range(250, 260)] + ["only-c"],
}


def _expected():
    pair = {(x, y): sorted(set(IDS[x]) & set(IDS[y]))
            for x, y in (("a", "b"), ("a", "c"), ("b", "c"))}
    return pair, sorted(set(IDS["a"]) & set(IDS["b"]) & set(IDS["c"]))


def _assert_no_ids(messages, ids):
    blob = b"".join(messages)
    for i in ids:
        digest = sha256(i.encode())
        assert i.encode() not in blob, i
        assert digest.digest() not in blob, i
        assert digest.hexdigest().encode() not in blob, i
    assert b"patient" not in blob


@pytest.mark.parametrize("method", ["ecdh", "hmac"])
def test_align_ids(method, sites):
    if method == "ecdh" and not psi.have_ecdh_psi():
        pytest.skip("openmined-psi not installed")
    keys, _ = sites
    al = psi.align_ids(IDS, method=method, keys=keys, progress=False)
    pair, common = _expected()
    assert al.pairwise == pair
    assert al.common == common == [f"patient-{i:05d}" for i in range(250, 260)]
    _assert_no_ids(al.relayed, [i for v in IDS.values() for i in v])


def test_relay_protocol_steps():
    if not psi.have_ecdh_psi():
        pytest.skip("openmined-psi not installed")
    client_ids, server_ids = IDS["a"], IDS["b"]
    state, request = psi.psi_client_request(client_ids, progress=False)
    response = psi.psi_server_response(server_ids, request, progress=False)
    shared = psi.psi_client_intersection(state, client_ids, response, progress=False)
    assert shared == sorted(set(client_ids) & set(server_ids))
    assert state.key not in request + response  # the client's secret stays home
    _assert_no_ids([request, response], client_ids + server_ids)
    with pytest.raises(ValueError, match="differ"):
        psi.psi_client_intersection(state, client_ids[:-1], response)
    with pytest.raises(ValueError, match="unique"):
        psi.psi_client_request(["x", "x"])


def test_empty_and_disjoint():
    if not psi.have_ecdh_psi():
        pytest.skip("openmined-psi not installed")
    al = psi.align_ids({"a": ["1", "2"], "b": ["3"]}, progress=False)
    assert al.pairwise == {("a", "b"): []} and al.common == []
