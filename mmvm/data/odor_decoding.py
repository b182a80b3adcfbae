"""Raw odor decoding of hippocampus sessions: how much odor a rat's raw counts carry.

The yardstick of the look-alike's signal strength (docs/hippocampus-lookalike.md):
per rat, a cross-validated logistic regression of the odor (A-D, chance 0.25) on the
rat's spike count per neuron in the 250 ms after odor onset (the window the samples
are cut from). It sees each rat alone, so it measures the signal in the input, not
any alignment of rats.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmvm.data.hippocampus import N_ODORS, WINDOW_BINS, RatSession

C = 0.1  # L2 strength (inverse); accuracy is flat for C in 0.003..1 on the look-alike


def window_counts(session: RatSession) -> tuple[np.ndarray, np.ndarray]:
    """``(counts [trials, neurons], odor [trials])`` of the rat's A-D trials: spikes per
    neuron in the 250 ms after its odor onset."""
    keep = session.odor < N_ODORS
    win = session.spikes[keep][:, :, session.onset:session.onset + WINDOW_BINS]
    return win.sum(axis=2).astype(np.float64), session.odor[keep]


def raw_odor_decoding(sessions: Sequence[RatSession], folds: int = 5,
                      seed: int = 0) -> list[float]:
    """Per rat: held-out accuracy of odor decoding from its raw window counts.

    ``log1p`` counts, standardized, L2 logistic regression (``C`` = :data:`C`);
    accuracy over ``folds`` stratified folds of the rat's trials (every trial is
    held out once). Deterministic in ``seed``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    out = []
    for s in sessions:
        x, y = window_counts(s)
        model = make_pipeline(
            FunctionTransformer(np.log1p), StandardScaler(),
            LogisticRegression(C=C, max_iter=5000))
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        out.append(float(np.mean(cross_val_score(model, x, y, cv=cv))))
    return out
