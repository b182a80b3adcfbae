"""Secure mode, ``align = "psi"``: the test sets aligned by a PSI ring of their own
(:mod:`mmvm.secure.psi`, as training's: :mod:`mmvm.federation.sealed_align`), so the
cross-site evaluation needs no key that a site holds (``require-psi`` sites refuse
keyed pseudonyms: a site colluding with the server could test guesses of any site's
ids offline).

Heldout step 0 fixes the evaluation's mean and says whether the site takes part
(:func:`join`); steps 1 to R are the ring's steps 0 to R - 1 over the sites that do
(:func:`ring_step`: a fresh scalar and a secret order of the site's test ids, each
set multiplied once per ring step and checked against its origin's count and the
site's ``max-align-rows``); the last step's replies carry the tags of every test
set, in its origin's order, which the server aligns. Step R + 1 seals the test
posteriors (:mod:`mmvm.federation.sealed_heldout`). The ring's envelopes are of
kind ``psi`` at the evaluation's round, counter = ring step.
"""

from __future__ import annotations

from mmvm.data import open_dataset
from mmvm.federation.messages import HeldOutReply, HeldOutRequest
from mmvm.federation.policy import SitePolicy
from mmvm.federation.progress import ProtocolOrderError
from mmvm.federation.sealed_align import KIND_PSI, ring_set
from mmvm.federation.site import Site
from mmvm.secure import psi
from mmvm.secure.envelope import seal
from mmvm.secure.errors import SecurityError
from mmvm.secure.session import SiteSecrets, b64, unb64


def join(site: Site, sec: SiteSecrets, weights: str) -> HeldOutReply:
    """Step 0 (the mean begun and loaded): the site takes part in the test ring."""
    sec.state["test"] = {"mode": "psi", "sealed": False, "step": 1}
    sec.save_state()
    site.progress.held_out = weights
    return HeldOutReply()


def ring_step(site: Site, sec: SiteSecrets, req: HeldOutRequest, policy: SitePolicy,
              round_: int) -> HeldOutReply:
    """Heldout step ``req.step`` = ring step ``req.step - 1``: blind the site's test
    ids (ring step 0) or multiply the predecessor's set; once each, in order."""
    test, me = sec.state["test"], sec.site
    ring, j = list(req.ring), req.step - 1
    if req.step != test.get("step") or not 0 <= j < len(test.get("ring", ring)):
        raise ProtocolOrderError(f"site {me}: heldout step {req.step} refused (the "
                                 f"test ring's next step is {test.get('step')})")
    if j == 0:
        members = set(sec.state.get("members", ()))
        if ring != sorted(set(ring)) or me not in ring or not set(ring) <= members \
                or len(ring) < 2:
            raise SecurityError(f"site {me}: test PSI ring {ring[:8]} is not a sorted "
                                f"list of two or more distinct sites of the training's "
                                f"alignment with this one in it")
        for peer in ring:
            if peer != me:
                sec.peer(peer)  # raises for a site this one does not trust
        data = open_dataset(site.test_path, site.names, site.cfg.data)
        order, scalar = psi.shuffled(len(data)), psi.new_scalar()
        test.update(ring=ring, order=order, scalar=b64(scalar))
        points = psi.blind(data.sample_ids, order, scalar)
        guard = None
    else:
        points, guard = _multiply(site, sec, req, policy, round_, j)
    test["step"] = req.step + 1
    sec.save_state()
    if guard is not None:  # after the state (a process killed in between is refused
        sec.guard = guard  # the step again: a ring step is multiplied once, whatever
        sec.save_guard()  # failed, and the ring breaks)
    if j == len(ring) - 1:  # fully multiplied: the tags of the set's origin
        return HeldOutReply(identifiers=[p.hex() for p in points])
    _, nxt = psi.ring_neighbours(ring, me)
    return HeldOutReply(posteriors={nxt: seal(sec.keys, sec.peer(nxt), psi.pack(points),
                                              run_id=sec.run_id, round=round_,
                                              counter=j + 1, kind=KIND_PSI)})


def _multiply(site: Site, sec: SiteSecrets, req: HeldOutRequest, policy: SitePolicy,
              round_: int, j: int) -> tuple[list[bytes], object]:
    test = sec.state["test"]
    if list(req.ring) != test["ring"]:
        raise SecurityError(f"site {sec.site}: test PSI step {j} for another ring")
    return ring_set(sec, test["ring"], j, req.sealed, req.counts, policy,
                    unb64(test["scalar"]), round_, "test PSI step")
