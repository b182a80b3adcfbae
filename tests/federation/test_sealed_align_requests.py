"""A site refuses a hostile server's align requests (mmvm/federation/sealed_align.py):
each further PSI ring step would let the server and a set's origin test another set
of guessed ids against the site's, so a step outside the ring, a ring that is not the
sorted distinct sites with this one in it, a step of another ring, a set that is not
the predecessor's, and a pseudonym step out of order are refused before anything of
the site's is blinded, multiplied or sent."""

from __future__ import annotations

import pytest

from mmvm.federation.messages import AlignRequest
from mmvm.federation.policy import SitePolicy
from mmvm.federation.sealed_align import align_pseudonyms, align_psi
from mmvm.secure.errors import SecurityError
from tests.support.federate import make_sites, secrets, site_keys, split


@pytest.fixture
def party(tiny_polymnist, tiny_config, tmp_path):
    """site-m0 of three vertical sites, its secrets, the ring, a policy."""
    sites = make_sites(tiny_config(tiny_polymnist, epochs=1),
                       *split(tiny_polymnist, tmp_path, "vertical"))
    site = next(s for s in sites.values() if s.name == "site-m0")
    sec = secrets(site, site_keys(sites), tmp_path / "state")
    ring = sorted(s.name for s in sites.values())
    return site, sec, ring, SitePolicy(test_bed=True)


@pytest.mark.parametrize("step, ring, match", [
    (3, None, r"PSI step 3 refused: a ring of 3 sites aligns in steps 0\.\.2"),
    (-1, None, r"PSI step -1 refused"),
    (0, ["site-m1", "site-m0", "site-m2"], "is not a sorted list of distinct sites"),
    (0, ["site-m1", "site-m2", "site-m2"], "is not a sorted list of distinct sites"),
    (0, ["site-m1", "site-m2"], "with this one in it"),
])
def test_a_step_outside_the_ring_or_a_ring_not_of_this_site_is_refused(party, step, ring,
                                                                       match):
    site, sec, sites, policy = party
    with pytest.raises(SecurityError, match=match):
        align_psi(site, sec, AlignRequest(step=step, ring=ring or sites), policy)
    assert "scalar" not in sec.state  # nothing blinded


def test_a_later_step_of_another_ring_or_from_another_site_is_refused(party):
    site, sec, ring, policy = party
    first = align_psi(site, sec, AlignRequest(step=0, ring=ring), policy)
    assert list(first.sealed) == ["site-m1"]  # its blinded set goes to its successor
    with pytest.raises(SecurityError, match="PSI step 1 for another ring"):
        align_psi(site, sec, AlignRequest(step=1, ring=ring[:2]), policy)
    # its predecessor in the ring is site-m2: a set from site-m1 is not read
    with pytest.raises(SecurityError, match=r"expects the set of 'site-m2' only, got "
                                            r"\['site-m1'\]"):
        align_psi(site, sec, AlignRequest(step=1, ring=ring, sealed={"site-m1": b"x"},
                                          counts={n: 64 for n in ring}), policy)


def test_a_pseudonym_step_before_the_sites_contribution_is_refused(party):
    site, sec, ring, policy = party
    with pytest.raises(SecurityError, match="pseudonym align out of order"):
        align_pseudonyms(site, sec, AlignRequest(step=0), policy)
