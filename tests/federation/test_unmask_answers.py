"""One unmask answer read on its own: what an honest survivor sends passes, and every
way of getting it wrong says what is wrong (the server then names the sender)."""

from __future__ import annotations

import pytest

from mmvm.federation.messages import UnmaskReply
from mmvm.federation.unmask_answers import Asked, read_answer
from mmvm.secure.keys import SiteKeys
from mmvm.secure.masking import round_seed
from mmvm.secure.session import b64
from mmvm.secure.unmasking import new_seed, reveal, share_seed

HOLDERS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def honest():
    """Site a's answer when d dropped: shares of b's and c's seeds, its seed with d."""
    keys = {n: SiteKeys.generate(n) for n in HOLDERS}
    pubs = {n: k.public for n, k in keys.items()}
    to_a = {s: share_seed(new_seed(), HOLDERS, s)["a"] for s in ("b", "c")}
    shares, seeds = reveal(keys["a"], pubs, HOLDERS, ["a", "b", "c"], ["d"], to_a,
                           run_id="1", round=2, group="g")
    assert seeds["d"] == round_seed(keys["d"], pubs["a"], run_id="1", round=2, group="g")
    return UnmaskReply(shares={"m0": {s: b64(v) for s, v in shares.items()}},
                       seeds={"m0": {d: b64(v) for d, v in seeds.items()}})


ASKED = {"m0": Asked(HOLDERS, ["a", "b", "c"], ["d"])}


def test_an_honest_answer_is_read_whole(honest):
    got = read_answer(honest, "a", ASKED)
    assert sorted(got.shares["m0"]) == ["b", "c"] and sorted(got.seeds["m0"]) == ["d"]
    assert all(len(v) == 32 for v in got.seeds["m0"].values())


@pytest.mark.parametrize("change,match", [
    (lambda r: {"shares": {"m0": ["b"]}}, "shares are not a map of modalities"),
    (lambda r: {"seeds": {**r.seeds, "m9": {}}}, "seeds name modalities it was not asked"),
    (lambda r: {"shares": {"m0": {"b": r.shares["m0"]["b"]}}},
     r"shares of 'm0' are for \['b'\], not for \['b', 'c'\]"),
    (lambda r: {"shares": {"m0": {**r.shares["m0"], "b": "%%"}}},
     "the one for b is not base64 text"),
    (lambda r: {"shares": {"m0": {**r.shares["m0"], "b": 7}}},
     "the one for b is not base64 text"),
    (lambda r: {"shares": {"m0": {**r.shares["m0"],  # b's share for d, not for a
                                  "b": b64(share_seed(new_seed(), HOLDERS, "b")["d"])}}},
     r"malformed share of site b's self-mask seed for 'm0' \(index 3, not 1\)"),
    (lambda r: {"seeds": {"m0": {}}}, r"pair seeds of 'm0' are for \[\], not for \['d'\]"),
    (lambda r: {"seeds": {"m0": {"d": "AAAA"}}}, "pair seed with d for 'm0' is not a "
                                                 "32-byte key"),
])
def test_a_wrong_answer_says_what_is_wrong(honest, change, match):
    bad = UnmaskReply(**{"shares": honest.shares, "seeds": honest.seeds, **change(honest)})
    with pytest.raises(ValueError, match=match):
        read_answer(bad, "a", ASKED)
