"""The server's side of secure aggregation against a faulty or malicious site: a
malformed share or update stops the window's mean with the sender's name (the run
cannot tell an honest site from a liar otherwise)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmvm.federation.coordinator import FederationError
from mmvm.federation.endpoint import LocalTransport
from tests.support.federate import federate
from tests.support.malicious import hybrid_sites


@pytest.fixture
def cfg(tiny_polymnist, tiny_config):
    torch.set_num_threads(1)
    return tiny_config(tiny_polymnist, epochs=1)


@pytest.mark.parametrize("how", ["garbled", "duplicate"])
def test_a_malformed_unmask_share_names_its_sender(cfg, tmp_path, tiny_polymnist, how):
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    seen: dict = {}

    class Tamper(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            out = super().exchange(requests, wait, need)
            unmask = {k: r for k, r in out.items() if getattr(r, "kind", "") == "unmask"}
            if unmask and "liar" not in seen:
                keys = sorted(k for k, r in unmask.items() if any(r.shares.values()))
                liar, other = keys[0], keys[1]
                m, by_owner = next((m, v) for m, v in out[liar].shares.items() if v)
                owner = next(o for o in sorted(by_owner)
                             if o in out[other].shares.get(m, {}))
                value = "%%%" if how == "garbled" else out[other].shares[m][owner]
                out[liar] = dataclasses.replace(
                    out[liar], shares={**out[liar].shares, m: {**by_owner, owner: value}})
                seen["liar"] = sites[liar].name
            return out

    with pytest.raises(FederationError, match="malformed share") as err:
        federate(cfg, {}, transport=Tamper(endpoints), secure=True, exchange="step")
    assert str(err.value).startswith(f"site {seen['liar']}:") or (
        how == "duplicate" and f"site {seen['liar']}'s" in str(err.value))
