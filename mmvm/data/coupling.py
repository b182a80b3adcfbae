"""How many samples couple the modalities: what a join of site files by sample id
gives, centrally (``mmvm train`` on several folders) or federated (the alignment).

An id scheme that does not match across sites (one site prepared without its ids,
another seed) still joins and trains, into (almost) uncoupled unimodal models; these
counts, and the note below them, are where it shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

OVERLAP_NOTE = 0.9  # a share of the smallest modality's samples held with another one


def coupling_counts(mask: np.ndarray, names: Sequence[str]) -> dict:
    """``mask`` [N, M] (sample has modality): samples, per modality, held with two or
    more modalities, with all of them."""
    mask = np.asarray(mask, dtype=bool)
    held = mask.sum(1)
    return {"samples": int(mask.shape[0]),
            "per_modality": {m: int(c) for m, c in zip(names, mask.sum(0), strict=True)},
            "multimodal": int((held >= 2).sum()), "complete": int((held == len(names)).sum())}


def weak_coupling_note(per_modality: Mapping[str, int], multimodal: int) -> str | None:
    """A note when fewer than :data:`OVERLAP_NOTE` of the smallest modality's samples
    are held together with another modality, else None."""
    counts = list(per_modality.values())
    if len(counts) < 2 or multimodal >= OVERLAP_NOTE * min(counts):
        return None
    return (f"only {multimodal} of the {min(counts)} samples of the smallest modality are "
            f"held for another one; if the sites should hold the same samples, check that "
            f"they prepared their data alike (same preparer, ids, --seed and metadata)")
