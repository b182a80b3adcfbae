"""The server's side of secure aggregation against a faulty or malicious site: a
malformed share or update stops the window's mean with the sender's name (the run
cannot tell an honest site from a liar otherwise)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from mmvm.federation.coordinator import FederationError
from mmvm.federation.endpoint import LocalTransport
from tests.support.federate import (
    federate,
    make_sites,
    sealed_endpoints,
    site_keys,
    split,
)
from tests.support.malicious import hybrid_sites


def _refused(res) -> dict[str, str]:
    """Every window's refused sites, with why."""
    return {site: why for row in res.history for site, why in
            (row.get("refused") or {}).items()}


def _psi_sites(cfg, tmp_path, data_root):
    """Three vertical sites behind sealed endpoints aligning by PSI."""
    specs, root = split(data_root, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    return sites, sealed_endpoints(sites, site_keys(sites), tmp_path / "state", align="psi")


@pytest.fixture
def cfg(tiny_polymnist, tiny_config):
    torch.set_num_threads(1)
    return tiny_config(tiny_polymnist, epochs=1)


@pytest.mark.parametrize("how,match", [
    ("garbled", "is not base64 text"),
    ("duplicate", "malformed share of site .* \\(index"),  # another holder's index
    ("missing", r"shares of 'm0' are for \[\], not for \['site-"),
    ("stray seed", r"pair seeds of 'm0' are for \['x'\], not for \[\]")])
def test_a_bad_unmask_answer_fails_only_its_sender_by_name(cfg, tmp_path, tiny_polymnist,
                                                           how, match):
    """Each unmask answer is read on its own before any is combined: a share that is
    not base64, a copy of another holder's share (its index), shares left out, a pair
    seed for a site that did not drop or of the wrong length make that site fail the
    unmask step, by name; the modality is not averaged that window and the run goes
    on (these used to stop the run with an error that named no one, or the relay)."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist, shards=4)
    seen: dict = {}

    class Tamper(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            out = super().exchange(requests, wait, need)
            unmask = {k: r for k, r in out.items() if getattr(r, "kind", "") == "unmask"}
            wanted = [k for k, r in unmask.items() if any(r.shares.values())]
            if len(wanted) > 1 and "liar" not in seen:
                liar, other = sorted(wanted)[:2]
                m, by_owner = next((m, v) for m, v in out[liar].shares.items() if v)
                owner = next(o for o in sorted(by_owner)
                             if o in out[other].shares.get(m, {}))
                r = out[liar]
                if how in ("garbled", "duplicate"):
                    value = "%%%" if how == "garbled" else out[other].shares[m][owner]
                    r = dataclasses.replace(r, shares={**r.shares,
                                                       m: {**by_owner, owner: value}})
                elif how == "missing":
                    r = dataclasses.replace(r, shares={**r.shares, m: {}})
                else:
                    r = dataclasses.replace(r, seeds={**r.seeds, m: {"x": "AAAA"}})
                out[liar] = r
                seen["liar"] = sites[liar].name
            return out

    res = federate(cfg, {}, transport=Tamper(endpoints), secure=True, exchange="step",
                   max_refused=2, min_sites=2)
    refused = _refused(res)
    assert list(refused) == [seen["liar"]], refused
    assert re.search(match, refused[seen["liar"]]), refused[seen["liar"]]
    assert len(res.history) == 3 and res.evaluation


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
    refused = _refused(res)
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
    refused = _refused(res)
    assert list(refused) == [done["liar"]]
    assert f"unmask answer's {part} are not a map of modalities" in refused[done["liar"]]
    assert len(res.history) == 3 and res.evaluation


@pytest.mark.parametrize("how,match", [
    ("origin", "at the last ring step it finishes"),
    ("duplicate", r"tags \(191 distinct\) for its 192 samples"),
    ("short", r"with 191 tags \(191 distinct\) for its 192 samples"),
    ("not hex", "are not 64 hex digits")])
def test_psi_tags_are_checked_and_blamed_on_the_site_that_finished_them(
        cfg, tmp_path, tiny_polymnist, how, match):
    """At the last ring step each site finishes one set, named by the ring. Tags it
    sends for another site's set, or a set with a tag repeated or left out, would
    otherwise be blamed on the honest origin (whose count they then miss): the
    server names the site that sent them."""
    sites, endpoints = _psi_sites(cfg, tmp_path, tiny_polymnist)
    done: dict = {}

    class Relabel(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            out = super().exchange(requests, wait, need)
            tagged = sorted(k for k, r in out.items() if getattr(r, "tags", None))
            if tagged and not done:
                k = tagged[0]  # read first: the honest origin would be blamed
                r, tags = out[k], list(out[k].tags)
                other = next(n for n in sorted(s.name for s in sites.values())
                             if n != r.origin)
                change = {"origin": {"origin": other},
                          "duplicate": {"tags": [tags[0], tags[0], *tags[2:]]},
                          "short": {"tags": tags[:-1]},
                          "not hex": {"tags": ["zz" * 32, *tags[1:]]}}[how]
                out[k] = dataclasses.replace(r, **change)
                done["liar"] = sites[k].name
            return out

    with pytest.raises(FederationError, match=match) as err:
        federate(cfg, {}, transport=Relabel(endpoints), secure=True, align="psi",
                 exchange="step")
    assert str(err.value).startswith(f"site {done['liar']} ")


@pytest.mark.parametrize("align", ["pseudonym", "psi"])
@pytest.mark.parametrize("how", ["garbage", "header", "flipped"])
def test_a_bad_alignment_envelope_is_blamed_on_its_sender(cfg, tmp_path, tiny_polymnist,
                                                          align, how):
    """Describe's id-key contributions and the PSI ring's sets are envelopes too: the
    server reads their headers and names a sender whose envelope does not parse or is
    addressed elsewhere; one damaged inside is refused by its recipient, which says
    whose it was (it used to read as the honest recipient's failure)."""
    from mmvm.secure.envelope import seal
    from mmvm.secure.errors import SecurityError
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    keys = site_keys(sites)
    names = {k: s.name for k, s in sites.items()}
    done: dict = {}

    class Bad(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            out = super().exchange(requests, wait, need)
            if next(iter(requests.values())).kind not in ("describe", "align"):
                return out
            for k, r in out.items():
                if done or not getattr(r, "sealed", None):
                    continue
                to = sorted(r.sealed)[0]
                third = next(n for n in names.values() if n not in (names[k], to))
                blob = {"garbage": b"\0" * 80,
                        "header": seal(keys[names[k]], keys[third].public, b"x" * 32,
                                       run_id="77", round=0,
                                       kind="idkey" if align == "pseudonym" else "psi"),
                        "flipped": r.sealed[to][:-1] + bytes([r.sealed[to][-1] ^ 1])}[how]
                out[k] = dataclasses.replace(r, sealed={**r.sealed, to: blob})
                done.update(liar=names[k], to=to)
            return out

    with pytest.raises((FederationError, SecurityError)) as err:
        federate(cfg, {}, transport=Bad(sealed_endpoints(sites, keys, tmp_path / "state",
                                                         align=align)),
                 secure=True, align=align, exchange="step")
    text = str(err.value)
    if how == "flipped":
        assert f"site {done['to']}, " in text and f"the envelope from {done['liar']!r}" \
            in text, text
    else:
        assert text.startswith(f"site {done['liar']} sent {done['to']!r} an envelope"), text


def test_masked_weights_without_a_share_for_every_co_holder_are_refused_by_name(
        cfg, tmp_path, tiny_polymnist):
    """A holder that leaves out a co-holder's self-mask share envelope would make that
    honest co-holder fail the unmask step (and the run stop, naming it): the server
    refuses the reply of the holder that left it out, and the run goes on."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist, shards=4)
    seen: dict = {}

    class Omit(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            out = super().exchange(requests, wait, need)
            for k, r in out.items():
                if getattr(r, "kind", "") == "window" and r.shares and "liar" not in seen:
                    victim = sorted(r.shares)[0]
                    out[k] = dataclasses.replace(
                        r, shares={p: b for p, b in r.shares.items() if p != victim})
                    seen.update(liar=sites[k].name, victim=victim)
            return out

    res = federate(cfg, {}, transport=Omit(endpoints), secure=True, exchange="step",
                   max_refused=2, min_sites=2)
    refused = _refused(res)
    assert list(refused) == [seen["liar"]]
    assert f"without a self-mask share for its co-holders ['{seen['victim']}']" \
        in refused[seen["liar"]]
    assert len(res.history) == 3 and res.evaluation


def _second_encoding(point: bytes) -> bytes:
    """The same X25519 point with the (ignored) top bit set: other bytes, one point."""
    return point[:-1] + bytes([point[-1] | 0x80])


@pytest.mark.parametrize("how,match", [
    ("repeated", r"not a set of its samples: 1 of its 192 points repeat others"),
    ("second encoding", "not a set of its samples: a point not in canonical form"),
    ("low order", "not a set of its samples: PSI: a ring element is a low-order point"),
    ("extra", r"^site site-m0 sealed 'site-m1' site-m0's PSI set of 193 points; "
              r"site-m0 described 192 samples")])
def test_a_bad_psi_ring_set_is_refused_by_the_next_site(
        cfg, tmp_path, tiny_polymnist, monkeypatch, how, match):
    """Each ring site checks the set it receives before it multiplies it: as many
    points as the server says the origin described, distinct once multiplied (two
    encodings of one point, which X25519 accepts, become equal), canonical and of the
    prime-order group. A compromised origin's bad set is refused by its successor,
    naming the site that sealed it; it used to pass along the ring and be blamed on
    the honest site that finished it. A set of another size the server refuses
    before it reaches the next site, naming the sender (it can read the size)."""
    from mmvm.secure import psi
    from mmvm.secure.errors import PeerContentError, SecurityError
    honest, calls = psi.blind, []

    def blind(ids, order, scalar):  # the first site to blind (site-m0) lies
        points = honest(ids, order, scalar)
        calls.append(1)
        if len(calls) == 1:
            points = {"repeated": [points[0], points[0], *points[2:]],
                      "second encoding": [points[0], _second_encoding(points[0]),
                                          *points[2:]],
                      "low order": [bytes(32), *points[1:]],
                      "extra": [*points, points[0]]}[how]
        return points

    monkeypatch.setattr(psi, "blind", blind)
    sites, endpoints = _psi_sites(cfg, tmp_path, tiny_polymnist)
    with pytest.raises((SecurityError, FederationError), match=match) as err:
        federate(cfg, {}, transport=LocalTransport(endpoints), secure=True, align="psi",
                 exchange="step")
    if how != "extra":
        assert str(err.value).startswith("site site-m1: the PSI set of 'site-m0' from "
                                         "'site-m0'")
        assert isinstance(err.value, PeerContentError)


def test_a_psi_set_sealed_to_a_site_other_than_the_next_is_refused_naming_its_sender(
        cfg, tmp_path, tiny_polymnist):
    sites, endpoints = _psi_sites(cfg, tmp_path, tiny_polymnist)

    class Extra(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            out = super().exchange(requests, wait, need)
            r = out.get("n0")
            if getattr(r, "kind", "") == "align" and r.sealed:
                third = sorted(s.name for s in sites.values())[2]
                out["n0"] = dataclasses.replace(r, sealed={**r.sealed, third: b"x"})
            return out

    with pytest.raises(FederationError, match=r"site site-m0 sent PSI sets to \['site-m1', "
                                              r"'site-m2'\]; at step 0 it sends one, to "
                                              r"'site-m1'"):
        federate(cfg, {}, transport=Extra(endpoints), secure=True, align="psi",
                 exchange="step")


@pytest.mark.parametrize("drop,match", [
    ("share", ": {liar} sealed it no share of its self-mask seed for 'm0'"),
    ("share and group", ": {liar} and this site were told different groups of 'm0' by "
                        "the server")])
def test_a_share_envelope_without_the_share_is_blamed_on_its_sealer(
        cfg, tmp_path, tiny_polymnist, monkeypatch, drop, match):
    """The server checks that an envelope goes to every co-holder, not what it holds:
    one that opens to no share of the modality stops the run at the co-holder, which
    names the holder that sealed it (it used to say only that a share was missing).
    Each envelope also says which groups its sealer was told it shares with the
    recipient: one told another group (a server's lie, or a sealer that claims one)
    is said to be the server's doing, not blamed on the sealer."""
    import json

    import mmvm.federation.sealed_weights as sealed_weights
    from mmvm.federation.messages import KIND_SHARE
    from mmvm.secure.errors import PeerContentError, SecurityError

    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist, shards=4)
    liar = sorted(s.name for s in sites.values() if "m0" in s.names)[0]
    honest_seal = sealed_weights.seal

    def seal(sender, recipient, data, **kw):
        if sender.site == liar and kw.get("kind") == KIND_SHARE:
            doc = json.loads(data)
            doc["shares"].pop("m0", None)
            if drop != "share":
                doc["groups"].pop("m0", None)
            data = json.dumps(doc).encode()
        return honest_seal(sender, recipient, data, **kw)

    monkeypatch.setattr(sealed_weights, "seal", seal)
    with pytest.raises(SecurityError, match=match.format(liar=liar)) as err:
        federate(cfg, {}, transport=LocalTransport(endpoints), secure=True,
                 exchange="step", max_refused=3, min_sites=2)
    assert isinstance(err.value, PeerContentError) == (drop == "share")


def test_an_envelope_of_another_round_is_refused_by_the_server_naming_its_sender(
        cfg, tmp_path, tiny_polymnist):
    """A holder that sends window 1 its window-0 share envelopes again would make its
    co-holders refuse a replay and the run stop at them; the server reads the round in
    the header and refuses that reply, naming the sender, and the run goes on."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist, shards=4)
    kept: dict = {}

    class Replay(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            out = super().exchange(requests, wait, need)
            first = next(iter(requests.values()))
            for k, r in out.items():
                if getattr(r, "kind", "") != "window" or not r.shares:
                    continue
                if first.window == 0 and not kept:
                    kept.update(key=k, shares=r.shares)
                elif first.window == 1 and k == kept.get("key"):
                    out[k] = dataclasses.replace(r, shares=kept["shares"])
            return out

    res = federate(cfg, {}, transport=Replay(endpoints), secure=True, exchange="step",
                   max_refused=2, min_sites=2)
    refused = _refused(res)
    liar = sites[kept["key"]].name
    assert list(refused) == [liar]
    assert "selfshare envelope of round 1, counter 1; this window's are round 2" \
        in refused[liar]
    assert len(res.history) == 3 and res.evaluation


def test_a_middle_ring_site_that_resizes_a_set_is_named_by_the_server(
        cfg, tmp_path, tiny_polymnist):
    """The server reads each ring envelope's size (AES-GCM adds only its tag) against
    the count the set's origin described: a middle site that drops or pads points is
    named before the set reaches the next site, which would have blamed the origin
    (max-align-rows) or no one."""
    sites, endpoints = _psi_sites(cfg, tmp_path, tiny_polymnist)

    class Resize(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            out = super().exchange(requests, wait, need)
            first = next(iter(requests.values()))
            if first.kind == "align" and first.step == 1:
                r = out["n1"]
                (to, blob), = r.sealed.items()
                out["n1"] = dataclasses.replace(r, sealed={to: blob[:-32]})
            return out

    with pytest.raises(FederationError, match=r"^site site-m1 sealed 'site-m2' site-m0's "
                                              r"PSI set of 191 points; site-m0 described "
                                              r"192 samples"):
        federate(cfg, {}, transport=Resize(endpoints), secure=True, align="psi",
                 exchange="step")
