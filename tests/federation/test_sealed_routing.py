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
    # a copy of another holder's share carries that holder's index: the relay is named,
    # never the holder it copied
    assert str(err.value).startswith(f"site {seen['liar']}:")


def test_an_owner_that_seals_a_malformed_share_is_named_by_the_holder(
        cfg, tmp_path, tiny_polymnist, monkeypatch):
    """The owner gives one holder a share with another holder's index: the holder
    checks it when it opens it and names the owner (the server would otherwise see a
    bad share relayed by an honest holder)."""
    import mmvm.federation.sealed_weights as sealed_weights
    from mmvm.secure.errors import PeerContentError

    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    owner = sorted(s.name for s in sites.values() if "m0" in s.names)[0]
    honest = sealed_weights.share_seed

    def lying(seed, holders, me):
        shares = honest(seed, holders, me)
        if me == owner:
            first, second = sorted(shares)[:2]
            shares[first] = bytes([shares[second][0]]) + shares[first][1:]
        return shares

    monkeypatch.setattr(sealed_weights, "share_seed", lying)
    with pytest.raises(PeerContentError, match=f": {owner} sent a malformed share of its "
                       r"self-mask seed for 'm0' \(index \d, not \d\)"):
        federate(cfg, {}, transport=LocalTransport(endpoints), secure=True,
                 exchange="step")


def test_a_site_whose_envelope_header_lies_is_refused_for_that_window_by_name(
        cfg, tmp_path, tiny_polymnist):
    """Site A's envelope for B is sent to C instead (its header still says B): C
    would fail to open it and be blamed. The server reads the unauthenticated header,
    refuses A's reply of that window naming A, and the run goes on."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    done: dict = {}

    class Swap(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            out = super().exchange(requests, wait, need)
            for k, r in out.items():
                if getattr(r, "kind", "") == "window" and len(r.posteriors) >= 2 \
                        and "liar" not in done:
                    b, c = sorted(r.posteriors)[:2]
                    posts = {**r.posteriors, b: r.posteriors[c], c: r.posteriors[b]}
                    out[k] = dataclasses.replace(r, posteriors=posts)
                    done["liar"] = sites[k].name
            return out

    res = federate(cfg, {}, transport=Swap(endpoints), secure=True, exchange="step",
                   max_refused=2)
    refused = {site: why for row in res.history for site, why in
               (row.get("refused") or {}).items()}
    assert list(refused) == [done["liar"]]
    assert refused[done["liar"]].startswith(f"site {done['liar']} sent ")
    assert "whose header says 'posterior' from" in refused[done["liar"]]


def test_an_envelope_that_does_not_open_is_blamed_on_its_sender_by_the_recipient(
        cfg, tmp_path, tiny_polymnist):
    """A body flipped in transit (the header intact): the recipient's error says
    which peer's envelope failed, so an operator knows where to look."""
    from mmvm.secure.errors import SecurityError

    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    done: dict = {}

    class Flip(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            out = super().exchange(requests, wait, need)
            for k, r in out.items():
                if getattr(r, "kind", "") == "window" and r.posteriors and not done:
                    to = sorted(r.posteriors)[0]
                    blob = bytearray(r.posteriors[to])
                    blob[-1] ^= 1
                    out[k] = dataclasses.replace(r, posteriors={**r.posteriors,
                                                                to: bytes(blob)})
                    done["sender"] = sites[k].name
            return out

    with pytest.raises(SecurityError, match="the envelope from") as err:
        federate(cfg, {}, transport=Flip(endpoints), secure=True, exchange="step")
    assert f"the envelope from {done['sender']!r}" in str(err.value)


@pytest.mark.parametrize("part", ["shares", "seeds"])
def test_an_unmask_answer_of_the_wrong_form_fails_only_its_sender(cfg, tmp_path,
                                                                  tiny_polymnist, part):
    """A list where the answer's shares (or seeds) of a modality must be a map: that
    site failed the unmask step, by name; the modality is not averaged that window
    (its holders keep their weights) and the run goes on."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    done: dict = {}

    class Garble(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            out = super().exchange(requests, wait, need)
            unmask = sorted(k for k, r in out.items() if getattr(r, "kind", "") == "unmask")
            if unmask and not done:
                k = unmask[0]
                out[k] = dataclasses.replace(out[k], **{part: {"m0": ["not", "a", "map"]}})
                done["liar"] = sites[k].name
            return out

    res = federate(cfg, {}, transport=Garble(endpoints), secure=True, exchange="step",
                   max_refused=2)
    refused = {site: why for row in res.history for site, why in
               (row.get("refused") or {}).items()}
    assert list(refused) == [done["liar"]]
    assert f"unmask answer's {part} are not a map of modalities" in refused[done["liar"]]
    assert len(res.history) == 3 and res.evaluation


def test_psi_tags_of_a_set_a_site_did_not_finish_are_refused_naming_it(
        cfg, tmp_path, tiny_polymnist):
    """At the last ring step each site finishes one set, its predecessor's-by-ring
    origin; tags it sends for another site's set would make the honest finisher's
    look like a duplicate. The server names the site that sent them."""
    from tests.support.federate import make_sites, sealed_endpoints, site_keys, split

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    endpoints = sealed_endpoints(sites, site_keys(sites), tmp_path / "state", align="psi")
    done: dict = {}

    class Relabel(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            out = super().exchange(requests, wait, need)
            tagged = sorted(k for k, r in out.items() if getattr(r, "tagged", None))
            if tagged and not done:
                k = tagged[0]  # read first: the honest finisher would be blamed
                other = next(n for n in sorted(s.name for s in sites.values())
                             if n not in out[k].tagged)
                out[k] = dataclasses.replace(out[k], tagged={
                    **out[k].tagged, other: next(iter(out[k].tagged.values()))})
                done["liar"] = sites[k].name
            return out

    with pytest.raises(FederationError, match="at the last ring step it finishes") as err:
        federate(cfg, {}, transport=Relabel(endpoints), secure=True, align="psi",
                 exchange="step")
    assert str(err.value).startswith(f"site {done['liar']} sent PSI tags for")
