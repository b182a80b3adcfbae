"""What a site's aligned rows point into: its sample ids, as they were at attach.

At attach a site keeps, for each aligned row, a position in its dataset (the sample
ids in the dataset's order). Every later message rebuilds the dataset from the files
(a resume, each message of a deployed site): a file replaced since with other ids
(one renamed, some dropped) would shift those positions onto other samples, and the
run would train on wrongly paired rows with no error (found by the fault walkthrough
of 2026-12-05). So the site's saved state records a digest of the ids, and a state
is restored only over the same ids.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Sequence
from pathlib import Path

from mmvm.data.store import DataError


class DataChangedError(DataError):
    """The site's files hold other samples than when the run attached."""


def ids_digest(sample_ids: Sequence[str]) -> str:
    """One id list, one digest (JSON: no id can pass for two)."""
    return hashlib.sha256(json.dumps(list(sample_ids)).encode()).hexdigest()[:32]


# per dataset object: its ids do not change while it lives, and a resident site
# saves every window (a secure one) or checkpoint: hash them once
_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def data_digest(data) -> str:
    """:func:`ids_digest` of ``data.sample_ids``, once per dataset object."""
    if data not in _DIGESTS:
        _DIGESTS[data] = ids_digest(data.sample_ids)
    return _DIGESTS[data]


def data_record(data) -> dict:
    """What a saved state keeps of the data (a dataset) it was attached over."""
    return {"data_ids": data_digest(data), "data_rows": len(data.sample_ids)}


def check_same_data(site: str, train_path: str | Path, data, state: dict,
                    path: str | Path) -> None:
    """Refuse to restore ``state`` (read from ``path``) over other samples than the
    dataset ``data`` holds; a state written before ids were recorded is taken as it
    is."""
    sample_ids = data.sample_ids
    if "data_ids" not in state or state["data_ids"] == data_digest(data):
        return
    rows = int(state.get("data_rows", -1))
    count = (f"{len(sample_ids)} samples now, {rows} then" if rows != len(sample_ids)
             else f"{rows} samples, but not the same sample ids")
    raise DataChangedError(
        f"site {site}: its training data ({train_path}) is not what its state ({path}) "
        f"was attached over: {count}. Its aligned rows would pair other samples; put "
        f"back the files the run began with, or start a new run")
