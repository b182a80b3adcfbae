"""The server's side of secure alignment against a faulty or malicious site: envelopes
at describe and around the PSI ring, ring sets and the finished tags are checked, and
a bad one is blamed on the site that made it (not on the honest origin, finisher or
recipient)."""

from __future__ import annotations

import dataclasses

import pytest

from mmvm.federation.coordinator import FederationError
from mmvm.federation.local import LocalTransport
from tests.support.federate import (
    Tampering,
    federate,
    make_sites,
    sealed_endpoints,
    site_keys,
    split,
)


def _psi_sites(cfg, tmp_path, data_root):
    """Three vertical sites behind sealed endpoints aligning by PSI."""
    specs, root = split(data_root, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    return sites, sealed_endpoints(sites, site_keys(sites), tmp_path / "state", align="psi")


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

    def relabel(requests, out):
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

    with pytest.raises(FederationError, match=match) as err:
        federate(cfg, {}, transport=Tampering(endpoints, relabel), secure=True,
                 align="psi", exchange="step")
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

    def bad(requests, out):
        if next(iter(requests.values())).kind not in ("describe", "align"):
            return
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

    with pytest.raises((FederationError, SecurityError)) as err:
        endpoints = sealed_endpoints(sites, keys, tmp_path / "state", align=align)
        federate(cfg, {}, transport=Tampering(endpoints, bad), secure=True, align=align,
                 exchange="step")
    text = str(err.value)
    if how == "flipped":
        assert f"site {done['to']}, " in text and f"the envelope from {done['liar']!r}" \
            in text, text
    else:
        assert text.startswith(f"site {done['liar']} sent {done['to']!r} an envelope"), text


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

    def extra(requests, out):
        r = out.get("n0")
        if getattr(r, "kind", "") == "align" and r.sealed:
            third = sorted(s.name for s in sites.values())[2]
            out["n0"] = dataclasses.replace(r, sealed={**r.sealed, third: b"x"})

    with pytest.raises(FederationError, match=r"site site-m0 sent PSI sets to \['site-m1', "
                                              r"'site-m2'\]; at step 0 it sends one, to "
                                              r"'site-m1'"):
        federate(cfg, {}, transport=Tampering(endpoints, extra), secure=True, align="psi",
                 exchange="step")


def test_a_middle_ring_site_that_resizes_a_set_is_named_by_the_server(
        cfg, tmp_path, tiny_polymnist):
    """The server reads each ring envelope's size (AES-GCM adds only its tag) against
    the count the set's origin described: a middle site that drops or pads points is
    named before the set reaches the next site, which would have blamed the origin
    (max-align-rows) or no one."""
    sites, endpoints = _psi_sites(cfg, tmp_path, tiny_polymnist)

    def resize(requests, out):
        first = next(iter(requests.values()))
        if first.kind == "align" and first.step == 1:
            r = out["n1"]
            (to, blob), = r.sealed.items()
            out["n1"] = dataclasses.replace(r, sealed={to: blob[:-32]})

    with pytest.raises(FederationError, match=r"^site site-m1 sealed 'site-m2' site-m0's "
                                              r"PSI set of 191 points; site-m0 described "
                                              r"192 samples"):
        federate(cfg, {}, transport=Tampering(endpoints, resize), secure=True, align="psi",
                 exchange="step")
