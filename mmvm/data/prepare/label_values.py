"""Labels given as text (a text file, or a ``.npy`` of strings) as class ids.

Class ids written as text stay ids (an empty entry: unknown, -1); class names
(``"pacemaker"``) become ids in sorted name order, and the names are kept with the
files so that tables and configs can say which id is which. A column that mixes ids
and names is refused: sorting ``"10"`` before ``"2"``, or ``"-1"`` as a class of its
own, would scramble the ids without a word.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmvm.data.store import DataError
from mmvm.data.store_format import LABEL_MAX


def class_ids(values: Sequence[str], where: str) -> tuple[np.ndarray, list[str] | None]:
    """``(ids [N] int64, names or None)`` of stripped text ``values`` (``where``
    names their file in errors)."""
    numbers = [_int_or_none(v) for v in values]
    given = [v for v in values if v]
    if given and all(n is not None for v, n in zip(values, numbers, strict=True) if v):
        return np.array([-1 if n is None else n for n in numbers], dtype=np.int64), None
    if any(n is not None for n in numbers):
        row = next(i for i, n in enumerate(numbers) if n is not None)
        raise DataError(f"{where}: row {row} holds the number {values[row]!r} among "
                        f"class names; give class ids or names, not both")
    names = sorted(set(given))
    if len(names) > LABEL_MAX + 1:
        raise DataError(f"{where}: {len(names)} distinct label names; labels are class "
                        f"ids 0..{LABEL_MAX} (is this a column of ids or free text?)")
    index = {name: i for i, name in enumerate(names)}
    return np.array([index.get(v, -1) for v in values], dtype=np.int64), names


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
