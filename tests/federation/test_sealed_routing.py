"""The server's side of secure aggregation against a faulty or malicious site: a
malformed envelope, share, update or unmask answer is refused, or fails its sender,
by name (the run cannot tell an honest site from a liar otherwise), and where the
protocol allows the run goes on without it for that window."""

from __future__ import annotations

import dataclasses
import re

import pytest

from mmvm.federation.local import LocalTransport
from tests.support.federate import (
    federate,
)
from tests.support.malicious import hybrid_sites


def _refused(res) -> dict[str, str]:
    """Every window's refused sites, with why."""
    return {site: why for row in res.history for site, why in
            (row.get("refused") or {}).items()}



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
    (its holders go on from its last mean) and the run goes on."""
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


def test_posterior_envelopes_larger_than_the_senders_rows_can_fill_are_refused(
        cfg, tmp_path, tiny_polymnist):
    """Site A seals B an envelope of the right header, 1 MB more than a table of every
    row A holds, of all its modalities, values and increments, can fill: the server
    refuses A's reply of that window by name, before the envelope reaches its inbox
    (and checkpoint) or B. Envelopes were bounded only by Flower's message size (a
    review of a hostile site, 2026-12-07)."""
    from mmvm.federation.envelope_checks import TABLE_SLACK
    from mmvm.federation.messages import KIND_POSTERIOR
    from mmvm.secure.envelope import peek_header, seal
    from tests.support.federate import RUN

    sites, keys, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    done: dict = {}

    class Bloat(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            out = super().exchange(requests, wait, need)
            for k, r in out.items():
                if getattr(r, "kind", "") == "window" and r.posteriors and not done:
                    me, to = sites[k].name, sorted(r.posteriors)[0]
                    h = peek_header(r.posteriors[to])
                    rows, mods = len(sites[k].data), len(sites[k].names)
                    most = 2 * mods * (rows * (4 + 8 * cfg.model.latent_dim + 16)
                                       + TABLE_SLACK)
                    big = seal(keys[me], keys[to].public, bytes(most + (1 << 20)),
                               run_id=RUN, round=h.round, counter=h.counter,
                               kind=KIND_POSTERIOR)
                    out[k] = dataclasses.replace(r, posteriors={**r.posteriors, to: big})
                    done["liar"] = me
            return out

    res = federate(cfg, {}, transport=Bloat(endpoints), secure=True, exchange="step")
    refused = _refused(res)
    assert list(refused) == [done["liar"]]
    assert re.search(rf"site {done['liar']} sealed '.*' [\d,]+ bytes of posteriors; its "
                     rf"[\d,]+ rows of \d modalities fill at most", refused[done["liar"]])
    assert len(res.history) == 3 and len(res.evaluation) == len(sites)
