"""How many samples couple the modalities: what a join of site files by sample id
gives, centrally (``mmvm train`` on several folders) or federated (the alignment).

An id scheme that does not match across sites (one site prepared without its ids,
another seed) still joins and trains, into (almost) uncoupled unimodal models; these
counts, and the note below them, are where it shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

OVERLAP_NOTE = 0.9  # the share of a modality's samples that should be held with another


def coupling_counts(mask: np.ndarray, names: Sequence[str]) -> dict:
    """``mask`` [N, M] (sample has modality): samples, per modality, per modality those
    held with another modality too ("coupled"), held with two or more, with all."""
    mask = np.asarray(mask, dtype=bool)
    held = mask.sum(1)
    return {"samples": int(mask.shape[0]),
            "per_modality": {m: int(c) for m, c in zip(names, mask.sum(0), strict=True)},
            "coupled": {m: int((mask[:, j] & (held >= 2)).sum())
                        for j, m in enumerate(names)},
            "multimodal": int((held >= 2).sum()), "complete": int((held == len(names)).sum())}


def weak_coupling_note(per_modality: Mapping[str, int], coupled: Mapping[str, int] | None
                       ) -> str | None:
    """A note naming each modality of which fewer than :data:`OVERLAP_NOTE` of the
    samples are held with another modality, else None (also without ``coupled``: an
    older record)."""
    if coupled is None or len(per_modality) < 2:
        return None
    weak = [f"{m} {coupled.get(m, 0)} of {n}" for m, n in per_modality.items()
            if n and coupled.get(m, 0) < OVERLAP_NOTE * n]
    if not weak:
        return None
    return (f"few samples are held with another modality ({'; '.join(weak)}); if the sites "
            f"should hold the same samples, check that they prepared their data alike "
            f"(same preparer, ids and metadata, and the same train/test split options: "
            f"--seed, --test-fraction, --groups)")
