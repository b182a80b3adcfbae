"""The server's checks of masked updates (mmvm/federation/masked_mean.py): a site's
masked update of a shared modality must be one uint64 array per parameter of the
modality's model, the masked weight and the holders' sketch rows, and every survivor's
must name the same parameters, of the same shapes, as its peers'."""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.federation.coordinator import Coordinator, FederationError, SiteInfo
from mmvm.federation.masked_mean import check_masked, masked_mean
from mmvm.federation.messages import MASK_WEIGHT, SKETCH, WindowReply
from mmvm.federation.plan import PlanArgs
from mmvm.secure import sketch

SHAPES = {"w": (3, 2), "b": (3,)}


def _coord(known: bool = True) -> Coordinator:
    """b and c hold m1 (shared), a holds m0."""
    sites = [SiteInfo("ka", "a", ["m0"], [f"s{i}" for i in range(4)]),
             SiteInfo("kb", "b", ["m1"], ["s0", "s1"]),
             SiteInfo("kc", "c", ["m1"], ["s2", "s3"])]
    coord = Coordinator(sites, ["m0", "m1"],
                        PlanArgs(batch_size=4, seed=0, epochs=1, exchange="step"))
    if known:
        coord.expect_shapes({"m1": SHAPES})
    return coord


def _update(**change) -> dict:
    arrays = {n: np.zeros(s, np.uint64) for n, s in SHAPES.items()}
    arrays[MASK_WEIGHT] = np.zeros(1, np.uint64)
    arrays[SKETCH] = np.zeros((2, sketch.ROWS), np.uint64)
    return {**arrays, **change}


def test_an_update_of_the_models_parameters_passes():
    check_masked(_coord(), "kb", "m1", _update())


@pytest.mark.parametrize("key, m, arrays, match", [
    ("ka", "m0", _update(), "sent masked weights of 'm0', which it does not share"),
    ("kb", "m1", [np.zeros(3, np.uint64)], "are not arrays of a known model"),
    ("kb", "m1", _update(w=np.zeros((3, 2), np.float32)), "not one uint64 array per"),
    ("kb", "m1", _update(w=np.zeros((2, 3), np.uint64)), "not one uint64 array per"),
    ("kb", "m1", _update(extra=np.zeros(1, np.uint64)), "not one uint64 array per"),
    ("kb", "m1", {k: v for k, v in _update().items() if k != SKETCH},
     "the masked weight and the holders' sketch rows"),
])
def test_a_masked_update_that_is_not_the_models_is_refused_naming_the_site(key, m, arrays,
                                                                          match):
    with pytest.raises(FederationError, match=match) as info:
        check_masked(_coord(), key, m, arrays)
    assert f"site {_coord().name(key)}" in str(info.value)


def test_without_the_models_shapes_nothing_passes():
    with pytest.raises(FederationError, match="are not arrays of a known model"):
        check_masked(_coord(known=False), "kb", "m1", _update())


@pytest.mark.parametrize("odd, match", [
    ({"v": np.zeros(3, np.uint64)}, "names other parameters than its peers'"),
    ({"b": np.zeros(4, np.uint64)}, "has another shape of b than its peers'"),
])
def test_survivors_whose_updates_differ_from_their_peers_are_named(odd, match):
    """Past check_masked (the server's model shapes unknown to a test of the mean
    alone), the mean still needs one layout across the group, before any unmasking."""
    good = {n: np.zeros(s, np.uint64) for n, s in SHAPES.items()}
    good[MASK_WEIGHT] = np.zeros(1, np.uint64)
    bad = {**good, **odd}
    if "v" in odd:
        bad.pop("b")
    replies = {"kb": WindowReply(weights={"m1": good}), "kc": WindowReply(weights={"m1": bad})}
    with pytest.raises(FederationError, match=f"site c: its masked update of 'm1' {match}"):
        masked_mean(_coord(), "m1", ["kb", "kc"], replies, {}, 0)
