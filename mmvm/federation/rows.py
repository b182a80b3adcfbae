"""Membership in sets of aligned rows, which the federation keeps sorted.

The server asks "which of these rows are in that set" ~45 times a window (a site's
rows of the window, the frame a table's rows are implied by); ``np.isin`` sorts both
arrays each time, a binary search into the sorted set does not.
"""

from __future__ import annotations

import numpy as np


def in_sorted(values: np.ndarray, sorted_rows: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_rows)`` for sorted, distinct ``sorted_rows``."""
    values = np.asarray(values)
    if not len(sorted_rows):
        return np.zeros(values.shape, dtype=bool)
    pos = np.searchsorted(sorted_rows, values)
    return sorted_rows[np.minimum(pos, len(sorted_rows) - 1)] == values
