"""Decoding across modalities: a probe fitted on one set of latents (a rat's, a view's)
and scored on another's.

The built-in probes and coherence measure agreement with the pairing key the samples
were aligned by, so they cannot tell a wrong pairing from a right one (a lab whose
track positions run the other way scores as well, its latents mirrored against the
others'). Whether the modalities share one latent space shows when a decoder fitted
on one modality's latents reads another's: the README's check, which users wrote by
hand from ``mmvm encode`` outputs.

Every cell is cross-validated over *units*: a sample's group (its trial or patient)
where the files give one, else its sample id, the same unit in every set. A probe is
fitted on the row set's samples outside one fold of units and scored on the column
set's samples inside it, so no cell scores a sample, nor a neighbour of one from the
same trial, that its probe was fitted on (two rats hold the same trials: a probe
fitted on all of rat 1 and scored on rat 2 would be scored on what it fitted, through
the other encoder, and "decode" labels that nothing in the latents carries). A cell
is NaN where no fold could be fitted (one class) or scored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mmvm.chance import chance_levels
from mmvm.probes import fit_probe


def across_matrix(mus: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                  units: Mapping[str, np.ndarray], folds: int = 5, seed: int = 0) -> dict:
    """``{"names", "matrix": [[acc]] (rows: fitted on, columns: scored on), "chance":
    {name: majority share}, "n": {name: labelled samples}, "folds"}`` of the latent
    sets ``mus``, their ``labels`` (-1: unknown, left out) and each sample's unit
    (group or sample id; the same in every set for the same trial or sample)."""
    if folds < 2:
        raise ValueError(f"folds = {folds}: cross-validation needs 2 or more")
    names = list(mus)
    known = {k: np.asarray(labels[k]) >= 0 for k in names}
    x = {k: np.asarray(mus[k], np.float64)[known[k]] for k in names}
    y = {k: np.asarray(labels[k])[known[k]] for k in names}
    every = np.unique(np.concatenate([np.asarray(units[k], dtype=str) for k in names]))
    fold_of = dict(zip(every, np.random.default_rng(seed).permutation(len(every)) % folds,
                       strict=True))
    fold = {k: np.array([fold_of[u] for u in np.asarray(units[k], dtype=str)[known[k]]],
                        dtype=np.int64) for k in names}
    matrix = [[_cell(x[a], y[a], fold[a], x[b], y[b], fold[b], folds) for b in names]
              for a in names]
    return {"names": names, "matrix": matrix, "folds": folds,
            "chance": {k: chance_levels(y[k])["majority"] for k in names},
            "n": {k: int(len(y[k])) for k in names}}


def _cell(xa, ya, fa, xb, yb, fb, folds: int) -> float:
    """Accuracy on set b of probes fitted on set a, fold by fold (see the module)."""
    hits = scored = 0
    for f in range(folds):
        fit, test = fa != f, fb == f
        if len(np.unique(ya[fit])) < 2 or not test.any():
            continue
        hits += int((fit_probe(xa[fit], ya[fit]).predict(xb[test]) == yb[test]).sum())
        scored += int(test.sum())
    return hits / scored if scored else math.nan
