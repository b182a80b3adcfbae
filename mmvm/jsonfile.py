"""Results as strict JSON (RFC 8259), readable by any tool, not only Python's.

Python's ``json`` writes a metric that was not measured (NaN: no test row held the
modality, an imputation total a secure run cannot count) as the bare word ``NaN``,
and infinity as ``Infinity``. Neither is JSON: ``jq`` before 1.7, JavaScript's
``JSON.parse``, R's ``jsonlite`` and most database loaders refuse the whole file.
:func:`json_bytes` writes them as ``null`` (not measured); numpy scalars and arrays
as plain numbers and lists. The project's readers already take a missing number for
NaN (:func:`mmvm.reporting.runs.number`), and still read the files written before.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def finite(doc: Any) -> Any:
    """``doc`` with every non-finite float (NaN, +-inf) replaced by None, numpy and
    torch scalars and arrays by Python numbers and lists; mappings and sequences
    copied."""
    if isinstance(doc, (np.generic, np.ndarray)) or (
            hasattr(doc, "tolist") and hasattr(doc, "dtype")):  # numpy, torch tensors
        doc = doc.tolist()
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, Mapping):  # a key JSON has no number for: its text ("nan")
        return {k if not isinstance(k, float) or math.isfinite(k) else str(k):
                finite(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [finite(v) for v in doc]
    return doc


def json_bytes(doc: Any, *, indent: int | None = 2) -> bytes:
    """``doc`` as strict JSON: NaN and inf as ``null``; anything else that JSON has
    no type for (a path, a date) as its ``str``."""
    return json.dumps(finite(doc), indent=indent, default=str, allow_nan=False).encode()
