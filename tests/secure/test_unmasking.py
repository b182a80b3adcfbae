"""Double masking: self-mask shares, the unmask rules, and the attacks they stop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mmvm.secure.errors import MaskingError
from mmvm.secure.masking import (
    FixedPoint,
    aggregate_masked,
    mask_update,
    round_seed,
    unmask_dropout,
)
from mmvm.secure.unmasking import (
    check_view,
    combine_seed,
    new_seed,
    reveal,
    share_seed,
    survivors_needed,
    threshold,
)

CTX = {"run_id": "r", "round": 3, "group": "weights/m0/x"}


def test_threshold_and_shares():
    assert [threshold(n) for n in (2, 3, 4, 5, 6)] == [1, 2, 2, 3, 3]
    assert [survivors_needed(n) for n in (2, 3, 4, 5, 6, 7, 8)] == [2, 3, 3, 4, 5, 6, 6]
    seed = new_seed()
    shares = share_seed(seed, ["a", "b", "c", "d", "e"], "a")
    assert sorted(shares) == ["b", "c", "d", "e"]
    t = threshold(5)
    for subset in itertools.combinations(shares.values(), t):
        assert combine_seed(list(subset), 5) == seed
    with pytest.raises(MaskingError, match="2 valid shares of a self-mask seed; 3 needed"):
        combine_seed(list(shares.values())[:t - 1], 5)
    with pytest.raises(MaskingError, match=">= 2 sites"):
        threshold(1)


def _round(sites, names, values, seeds):
    pubs = {s: k.public for s, k in sites.items()}
    masked, shares = {}, {n: {} for n in names}
    for i, n in enumerate(names):
        masked[n] = mask_update(sites[n], pubs, [values[n]], weight=1.0 + i,
                                self_seed=seeds[n], **CTX)
        for peer, share in share_seed(seeds[n], names, n).items():
            shares[peer][n] = share
    return pubs, masked, shares


@pytest.fixture
def group(sites):
    keys, _ = sites
    names = sorted(keys)  # a, b, c, d
    rng = np.random.default_rng(0)
    values = {n: rng.normal(size=5) for n in names}
    seeds = {n: new_seed() for n in names}
    return keys, names, values, seeds


def test_the_mean_survives_one_dropout_in_a_group_of_four(group):
    keys, names, values, seeds = group
    pubs, masked, shares = _round(keys, names, values, seeds)
    survivors, dropped = ["a", "b", "c"], ["d"]
    answers = {s: reveal(keys[s], pubs, names, survivors, dropped, shares[s], **CTX)
               for s in survivors}
    self_seeds = {s: combine_seed([answers[j][0][s] for j in survivors if j != s], 4)
                  for s in survivors}
    revealed = {s: answers[s][1] for s in survivors}
    (mean,), weight = aggregate_masked({s: masked[s] for s in survivors},
                                       participants=names, revealed=revealed,
                                       self_seeds=self_seeds, return_weight=True)
    w = {n: 1.0 + i for i, n in enumerate(names)}
    expected = sum(w[s] * values[s] for s in survivors) / sum(w[s] for s in survivors)
    np.testing.assert_allclose(mean, expected, atol=1e-6)
    assert weight == pytest.approx(6.0)


def test_claiming_that_a_site_dropped_does_not_unmask_it(group):
    """The server has d's update but tells a, b, c that d dropped: it gets every
    pair seed of d, but no share of d's self-mask, so d's update stays masked."""
    keys, names, values, seeds = group
    pubs, masked, shares = _round(keys, names, values, seeds)
    survivors, dropped = ["a", "b", "c"], ["d"]
    answers = {s: reveal(keys[s], pubs, names, survivors, dropped, shares[s], **CTX)
               for s in survivors}
    assert all("d" not in got for got, _ in answers.values())  # never d's share
    # the server removes every pair mask of d (as d added them) with the seeds
    stripped = unmask_dropout(masked["d"], {"d": {s: answers[s][1]["d"] for s in survivors}})
    guess = FixedPoint().decode(stripped[0]) / 4.0
    assert not np.allclose(guess, values["d"], atol=1e-3)  # b_d is still on it
    # control: with d's self-mask seed as well, the same steps would reveal d exactly
    plain = unmask_dropout(mask_update(keys["d"], pubs, [values["d"]], weight=4.0, **CTX),
                           {"d": {s: answers[s][1]["d"] for s in survivors}})
    np.testing.assert_allclose(FixedPoint().decode(plain[0]) / 4.0, values["d"], atol=1e-6)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_no_split_of_views_gets_a_site_both_its_self_mask_and_its_pair_masks(n):
    """Exhaustive over every way a server could tell each site a different story:
    to unmask target T it needs t peers to reveal T's share (T a survivor in their
    view) and every pair seed of T, which comes from a peer p only if p thinks T
    dropped, or from T only if T thinks p dropped. check_view makes that impossible."""
    names = [f"s{i}" for i in range(n)]
    target, peers, t = names[0], names[1:], threshold(n)
    for says_survivor in itertools.product([True, False], repeat=n - 1):
        share_givers = [p for p, ok in zip(peers, says_survivor, strict=True) if ok]
        if len(share_givers) < t:
            continue  # the server would lack T's self-mask
        # T must itself reveal its pair seed with every share giver: T's view then
        # drops all of them; the rule must refuse that view
        dropped = share_givers
        survivors = [x for x in names if x not in dropped]
        with pytest.raises(MaskingError, match="must remain"):
            check_view(target, names, survivors, dropped)


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 8, 9, 10])
def test_any_two_views_a_site_accepts_share_a_survivor(n):
    """Why the confirm round stops split views: a site reveals under view V only when
    every survivor of V committed to V, and a site commits to one view per window;
    so two different views can both be revealed under only if their survivor sets
    are disjoint. check_view's count (more than half of the group) rules that out,
    exhaustively here; and no accepted view is a pair."""
    names = [f"s{i}" for i in range(n)]
    accepted = []
    for k in range(1, n + 1):
        for u in itertools.combinations(names, k):
            try:
                check_view(u[0], names, list(u), [x for x in names if x not in u])
            except MaskingError:
                continue
            accepted.append(set(u))
    assert accepted and min(map(len, accepted)) >= 3
    assert all(a & b for a, b in itertools.combinations(accepted, 2))
    # and share t: with t - 1 colluders (who may seal each their own view) one
    # honest holder is in both, and it commits to one of them only
    assert all(len(a & b) >= threshold(n) for a, b in itertools.combinations(accepted, 2))
    # beside a confirmed view, only the sites it calls dropped can answer under the
    # view that nobody dropped: fewer than t shares of a dropped site's seed
    assert all(n - len(u) < threshold(n) for u in accepted)


def test_reveal_refuses_malformed_views(group):
    keys, names, values, seeds = group
    pubs, _, shares = _round(keys, names, values, seeds)
    bad = [(["a", "b"], ["c"]),            # d missing from the split
           (["a", "b", "c"], ["c", "d"]),  # c in both
           (["b", "c", "d"], ["a"])]       # a is told it dropped
    for survivors, dropped in bad:
        with pytest.raises(MaskingError, match="not a split"):
            reveal(keys["a"], pubs, names, survivors, dropped, shares["a"], **CTX)
    with pytest.raises(MaskingError, match="no self-mask share from survivors"):
        reveal(keys["a"], pubs, names, ["a", "b", "c", "d"], [], {}, **CTX)
    _, pair = reveal(keys["a"], pubs, names, ["a", "b", "c"], ["d"], shares["a"], **CTX)
    assert pair == {"d": round_seed(keys["a"], pubs["d"], **CTX)}
