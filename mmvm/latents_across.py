"""Decoding across modalities: a probe fitted on one set of latents (a rat's, a view's)
and scored on another's.

The built-in probes and coherence measure agreement with the pairing key the samples
were aligned by, so they cannot tell a wrong pairing from a right one (a lab whose
track positions run the other way scores as well, its latents mirrored against the
others'). Whether the modalities share one latent space shows when a decoder fitted
on one modality's latents reads another's: the README's check, which users wrote by
hand from ``mmvm encode`` outputs. The diagonal (a set scored on itself) is a
``folds``-fold cross-validated probe, whole groups to a fold where the samples come
in groups (a trial's windows in one fold: split by window, the probe would be tested
on the neighbours of what it fitted); an entry is NaN where the row's set has one
class only or the column's no labelled sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mmvm.probes import fit_probe


def across_matrix(mus: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                  groups: Mapping[str, np.ndarray] | None = None, folds: int = 5,
                  seed: int = 0) -> dict:
    """``{"names", "matrix": [[acc]] (rows: fitted on, columns: scored on), "chance":
    {name: majority share}, "n": {name: labelled samples}}`` of the latent sets
    ``mus`` and their ``labels`` (-1: unknown, left out); ``groups``: each sample's
    group, kept whole in the diagonal's folds."""
    names = list(mus)
    known = {k: labels[k] >= 0 for k in names}
    x = {k: np.asarray(mus[k], np.float64)[known[k]] for k in names}
    y = {k: np.asarray(labels[k])[known[k]] for k in names}
    g = {k: np.asarray(groups[k])[known[k]] for k in names} if groups else {}
    matrix = [[math.nan] * len(names) for _ in names]
    for i, a in enumerate(names):
        if len(np.unique(y[a])) < 2:
            continue
        probe = fit_probe(x[a], y[a])
        for j, b in enumerate(names):
            if i == j:
                matrix[i][j] = _cross_validated(x[a], y[a], g.get(a), folds, seed)
            elif len(y[b]):
                matrix[i][j] = float(probe.score(x[b], y[b]))
    chance = {k: float(np.bincount(y[k]).max() / len(y[k])) if len(y[k]) else math.nan
              for k in names}
    return {"names": names, "matrix": matrix, "chance": chance,
            "n": {k: int(len(y[k])) for k in names}}


def _cross_validated(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None,
                     folds: int, seed: int) -> float:
    """The accuracy over all samples of ``folds`` probes, each scored on the samples
    it did not see (stratified, seeded; whole groups to a fold); NaN where a class has
    fewer samples, or groups, than folds, or a fold's training part one class."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    units = np.unique(groups).size if groups is not None else len(y)
    if units < folds or np.bincount(y)[np.unique(y)].min() < folds:
        return math.nan
    split = (StratifiedGroupKFold if groups is not None else StratifiedKFold)(
        folds, shuffle=True, random_state=seed)
    hits = 0.0
    for tr, te in split.split(x, y, groups):
        if len(np.unique(y[tr])) < 2:
            return math.nan
        hits += fit_probe(x[tr], y[tr]).score(x[te], y[te]) * len(te)
    return float(hits / len(y))
