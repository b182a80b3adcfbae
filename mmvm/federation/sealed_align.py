"""Secure mode at a site: aligning ids without showing them to the server.

Two ways, chosen by the run config's ``align`` (a site can require PSI in its node
config):

- ``pseudonym`` (fast): at describe the site seals a random 32-byte contribution to
  every trusted peer; at align it derives the group id key from all contributions
  (:func:`mmvm.secure.session.group_key`) and answers the sorted keyed pseudonyms
  of its ids. Every site holds the key: a server colluding with one site can test
  guesses of any site's ids.
- ``psi``: commutative ECDH around the ring of sites (:mod:`mmvm.secure.psi`):
  ``len(ring)`` align steps; no key that a site or the server holds opens ids.

Either way the site's identifiers reach the server in an order of the site's own
choosing (sorted pseudonyms, or a secret shuffle), and :func:`positions` maps the
server's rows back to the site's samples.
"""

from __future__ import annotations

import copy
import os

import numpy as np

from mmvm.federation.messages import AlignReply, AlignRequest
from mmvm.federation.policy import SitePolicy
from mmvm.federation.site import Site
from mmvm.secure import psi
from mmvm.secure.envelope import open_envelope, seal
from mmvm.secure.errors import PeerContentError, SecurityError
from mmvm.secure.session import SiteSecrets, b64, group_key, pseudonym, unb64

KIND_IDKEY = "idkey"
KIND_PSI = "psi"
MODES = ("pseudonym", "psi")


def contributions(sec: SiteSecrets) -> dict[str, bytes]:
    """Describe, pseudonym mode: a fresh contribution sealed to every trusted peer."""
    contribution = os.urandom(32)
    sec.state = {"mode": "pseudonym", "contribution": b64(contribution)}
    sec.save_state()
    return {peer: seal(sec.keys, pub, contribution, run_id=sec.run_id, round=0,
                       kind=KIND_IDKEY)
            for peer, pub in sorted(sec.directory.items()) if peer != sec.site}


def _pseudonyms(site: Site, sec: SiteSecrets) -> list[tuple[str, str]]:
    key = unb64(sec.state["group_key"])
    return sorted((pseudonym(key, s), s) for s in site.data.sample_ids)


def _open(sec: SiteSecrets, sender: str, blob: bytes, what: str, **check) -> bytes:
    """The payload of ``sender``'s alignment envelope (round 0); a failure says whose
    envelope it was (the sender's, or the relay's, fault: not this site's)."""
    try:
        return open_envelope(sec.keys, sec.peer(sender), blob, run_id=sec.run_id,
                             expected_round=0, **check)
    except SecurityError as err:
        raise type(err)(f"site {sec.site}, {what}: the envelope from {sender!r}: {err}") \
            from err


def _count(sec: SiteSecrets, req: AlignRequest, peer: str) -> int:
    n = req.counts.get(peer) if isinstance(req.counts, dict) else None
    if type(n) is not int or n < 0:
        raise SecurityError(f"site {sec.site}: the server gives no sample count of "
                            f"{peer!r} with the alignment")
    return n


def align_pseudonyms(site: Site, sec: SiteSecrets, req: AlignRequest,
                     policy: SitePolicy) -> AlignReply:
    """Derive the group key and answer this site's pseudonyms, once every peer's set
    is within ``max-align-rows``: a peer holds the key too and can bring pseudonyms of
    guessed ids, and attach would tell it which are this site's (the counts are the
    server's: one colluding with the peer can hide them, as deploy/README.md says)."""
    if "contribution" not in sec.state or req.step != 0:
        raise SecurityError(f"site {sec.site}: pseudonym align out of order")
    got = {sec.site: unb64(sec.state["contribution"])}
    guard = copy.deepcopy(sec.guard)
    for sender, blob in sorted(req.sealed.items()):
        got[sender] = _open(sec, sender, blob, "align", guard=guard, kind=KIND_IDKEY)
        if len(got[sender]) != 32:
            raise SecurityError(f"site {sec.site}: malformed id-key contribution from "
                                f"{sender!r}")
        policy.check_peer_set(sec.site, sender, _count(sec, req, sender))
    sec.state.update(group_key=b64(group_key(got, sec.run_id)), members=sorted(got))
    sec.guard = guard  # written once the site's state is (SealedChannel.align)
    sec.save_state()
    return AlignReply(identifiers=[p for p, _ in _pseudonyms(site, sec)])


def align_psi(site: Site, sec: SiteSecrets, req: AlignRequest,
              policy: SitePolicy) -> AlignReply:
    """One ring step: blind own ids (step 0) or multiply the predecessor's set (one
    step per site of the ring, no more: each further step would let a server and
    the set's origin test another set of guesses against this site's ids)."""
    ring, me = list(req.ring), sec.site
    if not 0 <= req.step < len(ring):
        raise SecurityError(f"site {me}: PSI step {req.step} refused: a ring of "
                            f"{len(ring)} sites aligns in steps 0..{len(ring) - 1}")
    if req.step == 0:
        if ring != sorted(set(ring)) or me not in ring:
            raise SecurityError(f"site {me}: PSI ring {ring} is not a sorted list of "
                                f"distinct sites with this one in it")
        for peer in ring:
            if peer != me:
                sec.peer(peer)  # raises for a site this one does not trust
        order = psi.shuffled(len(site.data))
        sec.state = {"mode": "psi", "ring": ring, "members": ring,
                     "scalar": b64(psi.new_scalar()), "order": order}
        points = psi.blind(site.data.sample_ids, order, unb64(sec.state["scalar"]))
    else:
        if sec.state.get("mode") != "psi" or ring != sec.state["ring"]:
            raise SecurityError(f"site {me}: PSI step {req.step} for another ring")
        points, guard = ring_set(sec, ring, req.step, req.sealed, req.counts, policy,
                                 unb64(sec.state["scalar"]), 0, "PSI step")
        sec.guard = guard  # written once the site's state is (SealedChannel.align)
    sec.save_state()
    if req.step == len(ring) - 1:  # fully multiplied: the tags of the set's origin
        return AlignReply(origin=psi.origin(ring, me, req.step),
                          tags=[p.hex() for p in points])
    _, nxt = psi.ring_neighbours(ring, me)
    return AlignReply(sealed={nxt: seal(sec.keys, sec.peer(nxt), psi.pack(points),
                                        run_id=sec.run_id, round=0, counter=req.step + 1,
                                        kind=KIND_PSI)})


def ring_set(sec: SiteSecrets, ring: list[str], step: int, sealed: dict, counts,
             policy: SitePolicy, scalar: bytes, round_: int, what: str
             ) -> tuple[list[bytes], object]:
    """Ring step ``step`` (>= 1) of a PSI ring: the predecessor's set, opened (kind
    ``psi``, round ``round_``, counter ``step``), as many points as the server's
    ``counts`` say its origin has and within ``max-align-rows`` before it is read,
    multiplied by ``scalar``; and the replay guard that marks the envelope used
    (written once the site's state is)."""
    me = sec.site
    prev, _ = psi.ring_neighbours(ring, me)
    if set(sealed) != {prev}:
        raise SecurityError(f"site {me}: {what} {step} expects the set of {prev!r} "
                            f"only, got {sorted(sealed)[:4]}")
    guard = copy.deepcopy(sec.guard)
    try:
        payload = open_envelope(sec.keys, sec.peer(prev), sealed[prev], run_id=sec.run_id,
                                guard=guard, expected_round=round_,
                                expected_counter=step, kind=KIND_PSI)
    except SecurityError as err:  # the sender's (or the relay's) fault: say whose
        raise type(err)(f"site {me}, {what} {step}: the envelope from {prev!r}: "
                        f"{err}") from err
    origin = psi.origin(ring, me, step)
    n = counts.get(origin) if isinstance(counts, dict) else None
    if type(n) is not int or n < 0:
        raise SecurityError(f"site {me}: the server gives no sample count of "
                            f"{origin!r} with {what} {step}")
    if len(payload) != n * psi.POINT_BYTES:
        raise SecurityError(f"site {me}: the PSI set of {origin!r} from {prev!r} has "
                            f"{len(payload) / psi.POINT_BYTES:g} points, the server's "
                            f"count of {origin}'s samples is {n}: the server's word is "
                            f"wrong, or it let the set through unchecked")
    policy.check_ring_set(me, origin, n)  # before it is read
    return multiplied(me, prev, origin, payload, n, scalar), guard


_FIELD = 2 ** 255 - 19  # X25519's field: a canonical u-coordinate is below it


def multiplied(me: str, prev: str, origin: str, payload: bytes, n: int, scalar: bytes
                ) -> list[bytes]:
    """The points of ``origin``'s set as ``prev`` sealed them, multiplied by this
    site's scalar, once they are as many as ``origin`` described, distinct and valid
    points. Each site checks the set it receives, so a bad one is the fault of the
    site that sealed it (named), not of the honest site that would finish it."""
    points = psi.unpack(payload)  # (its size checked: n whole points)
    try:
        if any(int.from_bytes(p, "little") >= _FIELD for p in points):
            raise ValueError("a point not in canonical form")
        out = psi.exponentiate(points, scalar)
        if len(set(out)) != n:  # also two encodings of one point: equal once multiplied
            raise ValueError(f"{n - len(set(out))} of its {n} points repeat others")
        return out
    except (ValueError, SecurityError) as err:
        raise PeerContentError(f"site {me}: the PSI set of {origin!r} from {prev!r} is "
                               f"not a set of its samples: {err}") from None


def positions(site: Site, sec: SiteSecrets) -> np.ndarray:
    """Dataset rows of the identifiers this site reported, in that order."""
    if sec.state.get("mode") == "psi":
        return np.asarray(sec.state["order"], dtype=np.int64)
    if "group_key" not in sec.state:
        raise SecurityError(f"site {sec.site}: attach before align (no group key)")
    return site.data.rows_of([sid for _, sid in _pseudonyms(site, sec)])
