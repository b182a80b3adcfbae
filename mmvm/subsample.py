"""Reproducible uniform subsets for "use only N rows" settings (``data.max_train``,
``data.max_test``, ``eval.probe_train``).

Taking the first N rows of a table sorted by sample id is not a sample of it: ids are
often assigned in class order (CUB's, a registry's per-species files), so the first N
can hold a few classes only, and a probe trained on them measures that, not the
representation. These helpers choose N uniformly at random, reproducibly:

* :func:`keep_ids` by sample id: the N ids with the smallest keyed BLAKE2b hash. The
  choice depends only on the ids themselves, not on their order or on which file they
  came from, so sites and the server pick the same samples without talking, and the
  subsets are nested (N + 1 keeps the N).
* :func:`keep_rows` by position, for arrays that have lost their ids: a seeded draw.
Both return the kept items in their original order."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

_PERSON = b"mmvm.subset"


def _rank(sid: str) -> bytes:
    return hashlib.blake2b(sid.encode(), digest_size=8, person=_PERSON).digest()


def keep_ids(ids: Sequence[str], limit: int) -> list[str]:
    """``limit`` of ``ids`` chosen uniformly at random by a hash of each id (all of
    them when ``limit`` is 0 or not smaller), in their given order."""
    if not limit or limit >= len(ids):
        return list(ids)
    chosen = set(sorted(ids, key=_rank)[:limit])
    return [sid for sid in ids if sid in chosen]


def keep_rows(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of ``limit`` of ``n`` rows drawn uniformly without replacement
    with ``seed`` (all ``n`` when ``limit`` is 0 or not smaller)."""
    if not limit or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
