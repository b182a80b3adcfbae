"""A resume answer is signed with the key its site described itself with."""

from __future__ import annotations

import pytest

from mmvm.secure.identity import (
    new_challenge,
    parse_record,
    pinned,
    proof_problem,
    prove,
    record_of,
)
from mmvm.secure.keys import SiteKeys


@pytest.fixture(scope="module")
def keys():
    return {n: SiteKeys.generate(n) for n in ("A", "B")}


def test_the_site_own_signature_over_the_challenge_is_accepted(keys):
    c = new_challenge()
    assert proof_problem(record_of(keys["A"]), "7", "A", c,
                         prove(keys["A"], "7", c, asker="9"), asker="9") is None


@pytest.mark.parametrize("change", ["run", "asker", "challenge", "signer", "garbage",
                                    "empty"])
def test_anything_but_the_site_own_signature_of_this_challenge_is_refused(keys, change):
    """``asker``: the challenge relayed to the site in another run that resumes run 7
    (a submitter's ``resume=7``): its signature does not answer run 9's."""
    c = new_challenge()
    proof = {"run": prove(keys["A"], "8", c, asker="9"),      # another run's answer
             "asker": prove(keys["A"], "7", c, asker="10"),   # asked in another run
             "challenge": prove(keys["A"], "7", new_challenge(), asker="9"),  # replayed
             "signer": prove(keys["B"], "7", c, asker="9"),   # another site's key
             "garbage": "not base64!",
             "empty": ""}[change]
    why = proof_problem(record_of(keys["A"]), "7", "A", c, proof, asker="9")
    assert why, change
    if change in ("run", "asker", "challenge", "signer"):
        assert "not signed with the key A began the run with (fingerprint" in why


def test_a_record_must_be_a_valid_self_signed_record_of_that_name(keys):
    assert parse_record(record_of(keys["A"]), "A").sign == keys["A"].public.sign
    with pytest.raises(ValueError, match="site A sent the public key record of 'B'"):
        parse_record(record_of(keys["B"]), "A")
    edited = record_of(keys["A"]).replace(keys["A"].public.to_dict()["ed25519"],
                                          keys["B"].public.to_dict()["ed25519"])
    with pytest.raises(ValueError, match="site A: its public key record is not valid"):
        parse_record(edited, "A")
    with pytest.raises(ValueError, match="site A sent no public key record"):
        parse_record("", "A")
    with pytest.raises(ValueError, match="no public key record .*of 5000 characters"):
        parse_record("x" * 5000, "A")
    with pytest.raises(ValueError, match="not a map of names to records"):
        pinned({"A": 3})
