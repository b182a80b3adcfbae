"""The server's arithmetic of masked FedAvg: what a masked update must look like,
and a modality's mean once its survivors answered the unmask step."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mmvm.federation.coordinator import Coordinator, FederationError
from mmvm.federation.messages import MASK_WEIGHT, SKETCH, SKETCH_WINDOW
from mmvm.federation.unmask_answers import Answer
from mmvm.secure import sketch
from mmvm.secure.masking import FixedPoint, aggregate_masked
from mmvm.secure.unmasking import combine_seed


def check_masked(coord: Coordinator, key: str, m: str, arrays) -> None:
    """A masked update of ``m``: of a modality site ``key`` shares, one uint64 array
    per parameter of the modality's model, the masked weight (``(1,)``) and the
    holders' sketch rows (``(holders, ROWS)``: :mod:`mmvm.secure.sketch`)."""
    site = coord.name(key)
    if key not in coord.shared.get(m, []):
        raise FederationError(f"site {site} sent masked weights of {m!r}, which it does "
                              f"not share")
    want = dict(coord.model_shapes(m) or {})
    if not isinstance(arrays, Mapping) or not want:
        raise FederationError(f"site {site}: masked weights of {m!r} are not arrays of "
                              f"a known model")
    want[MASK_WEIGHT] = (1,)
    want[SKETCH] = (len(coord.shared[m]), sketch.ROWS)
    if sorted(arrays) != sorted(want) or any(
            getattr(a, "dtype", None) != np.uint64 or tuple(a.shape) != want[n]
            for n, a in arrays.items()):
        raise FederationError(f"site {site} sent a masked update of {m!r} that is not "
                              f"one uint64 array per parameter of the modality's model, "
                              f"the masked weight and the holders' sketch rows")


def masked_mean(coord: Coordinator, m: str, survivors: list, replies: Mapping,
                answers: Mapping[str, Answer], index: int) -> dict:
    """Modality ``m``'s sample-weighted mean from the ``survivors``' masked updates
    (``replies``) of window ``index`` and unmask answers: self-masks rebuilt from
    shares, the dropped sites' pair masks removed, the total weight checked against
    their counts. The parameters as float32 (what the sites load), the averaged
    sketch rows as float64 with the window they are of and the total weight (what
    each holder checks them by)."""
    name, n = coord.name, len(coord.shared[m])
    masked = {name(k): replies[k].weights[m] for k in survivors}
    params = sorted(p for p in next(iter(masked.values())) if p != MASK_WEIGHT)
    for site, arrays in masked.items():
        if sorted(arrays) != sorted([*params, MASK_WEIGHT]):
            raise FederationError(f"site {site}: its masked update of {m!r} names "
                                  f"other parameters than its peers'")
    for s, arrays in masked.items():  # one shape per parameter across the group
        first = next(iter(masked.values()))
        odd = [p for p in arrays if np.shape(arrays[p]) != np.shape(first[p])]
        if odd:
            raise FederationError(f"site {s}: its masked update of {m!r} has another "
                                  f"shape of {odd[0]} than its peers'")
    try:
        seeds = {name(s): combine_seed([answers[j].shares[m][name(s)]
                                        for j in survivors if j != s], n)
                 for s in survivors}
        revealed = {name(k): answers[k].seeds[m] for k in survivors}
        means, weight = aggregate_masked(
            {s: [a[p] for p in params] + [a[MASK_WEIGHT]] for s, a in masked.items()},
            participants=[name(k) for k in coord.shared[m]], revealed=revealed,
            self_seeds=seeds, return_weight=True)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise FederationError(f"masked FedAvg of {m!r} failed: "
                              f"{type(err).__name__}: {err}") from None
    expected = sum(len(coord.sites[k].held) for k in survivors)
    clip = FixedPoint().clip  # every site clipped its values: so is an honest mean
    if abs(weight - expected) > 0.5 or not all(
            np.isfinite(v).all() and np.abs(v).max(initial=0.0) <= clip
            for v in means):
        raise FederationError(f"masked FedAvg of {m!r}: total weight {weight:.3f} is "
                              f"not the survivors' {expected} samples; the sites' "
                              f"views of the group differ, or an update is corrupt")
    out = {p: v.astype(np.float64 if p == SKETCH else np.float32)
           for p, v in zip(params, means, strict=True)}
    return {**out, SKETCH_WINDOW: np.array([float(index), weight])}
