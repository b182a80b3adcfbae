"""The ECDH ring: the same id gets the same tag whatever the ring order; nothing
short of every site's scalar produces a tag; malformed ring elements are refused."""

from __future__ import annotations

import pytest

from mmvm.secure import psi
from mmvm.secure.errors import SecurityError


def _tags(ids, scalars):
    """Run one origin's set through every scalar, in the given order."""
    points = psi.blind(ids, list(range(len(ids))), scalars[0])
    for k in scalars[1:]:
        points = psi.exponentiate(points, k)
    return points


def test_tags_agree_across_ring_orders_and_separate_ids():
    a, b, c = (psi.new_scalar() for _ in range(3))
    ids = [f"patient-{i}" for i in range(50)]
    t_abc = _tags(ids, [a, b, c])
    assert t_abc == _tags(ids, [b, c, a]) == _tags(ids, [c, a, b])  # commutative
    assert len(set(t_abc)) == len(ids)  # distinct ids, distinct tags
    # an id another site holds gets the same tag there; a different id does not
    other = _tags(["patient-7", "patient-999"], [b, c, a])
    assert other[0] == t_abc[7] and other[1] not in t_abc


def test_fewer_scalars_or_other_scalars_do_not_give_the_tag():
    a, b, c = (psi.new_scalar() for _ in range(3))
    ids = ["x", "y"]
    full = _tags(ids, [a, b, c])
    assert _tags(ids, [a, b]) != full  # a server colluding with a and b only
    assert _tags(ids, [a, b, psi.new_scalar()]) != full


def test_order_is_a_permutation_and_blind_follows_it():
    order = psi.shuffled(100)
    assert sorted(order) == list(range(100))
    k = psi.new_scalar()
    ids = [str(i) for i in range(100)]
    assert psi.blind(ids, order, k) == [psi.blind([ids[i]], [0], k)[0] for i in order]


def test_ring_helpers_and_malformed_elements():
    ring = ["a", "b", "c"]
    assert psi.ring_neighbours(ring, "a") == ("c", "b")
    assert [psi.origin(ring, "c", s) for s in range(3)] == ["c", "b", "a"]
    pts = psi.blind(["1", "2"], [0, 1], psi.new_scalar())
    assert psi.unpack(psi.pack(pts)) == pts
    with pytest.raises(SecurityError, match="whole number of points"):
        psi.unpack(b"x" * 33)
    with pytest.raises(SecurityError, match="32-byte point"):
        psi.exponentiate([b"short"], psi.new_scalar())
    with pytest.raises(SecurityError, match="low-order point"):
        psi.exponentiate([bytes(32)], psi.new_scalar())
