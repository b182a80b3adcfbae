"""Labels given as text (a text file, or a ``.npy`` of strings) as class ids.

Class ids written as text stay ids (an empty entry: unknown, -1); class names
(``"pacemaker"``) become ids in sorted name order, and the names are kept with the
files so that tables and configs can say which id is which. A column that mixes ids
and names is refused: sorting ``"10"`` before ``"2"``, or ``"-1"`` as a class of its
own, would scramble the ids without a word.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mmvm.data.store import DataError
from mmvm.data.store_format import LABEL_MAX


def class_ids(values: Sequence[str], where: str, classes: Sequence[str] | None = None
              ) -> tuple[np.ndarray, list[str] | None]:
    """``(ids [N] int64, names or None)`` of stripped text ``values`` (``where``
    names their file in errors). ``classes``: the class names in id order, the same
    list at every site (``--classes``): names are numbered by it, not by the sorted
    names this file happens to hold (a site without one class would shift the ids
    of the others), and ids given as ids are named by it."""
    numbers = [_int_or_none(v) for v in values]
    given = [v for v in values if v]
    if given and all(n is not None for v, n in zip(values, numbers, strict=True) if v):
        ids = np.array([-1 if n is None else n for n in numbers], dtype=np.int64)
        return ids, (check_named(ids, classes, where) if classes is not None else None)
    fractional = [v for v in given if _fraction(v)]
    if fractional and all(_fraction(v) or _int_or_none(v) is not None for v in given):
        raise DataError(f"{where}: label values such as {fractional[0]!r} are numbers "
                        f"that are not whole: a continuous value, not classes? Bin it into "
                        f"classes first (a probe of it as names would have a class per "
                        f"value)")
    if any(n is not None for n in numbers):
        row = next(i for i, n in enumerate(numbers) if n is not None)
        raise DataError(f"{where}: row {row} holds the number {values[row]!r} among "
                        f"class names; give class ids or names, not both")
    if classes is not None:
        index = {name: i for i, name in enumerate(check_classes(classes, where))}
        odd = sorted(set(given) - set(index))
        if odd:
            raise DataError(f"{where}: class names {odd[:5]} are not among --classes "
                            f"{list(classes)[:10]}")
        return np.array([index.get(v, -1) for v in values], dtype=np.int64), list(classes)
    names = sorted(set(given))
    _check_spellings(names, where)
    if len(names) > LABEL_MAX + 1:
        raise DataError(f"{where}: {len(names)} distinct label names; labels are class "
                        f"ids 0..{LABEL_MAX} (is this a column of ids or free text?)")
    index = {name: i for i, name in enumerate(names)}
    return np.array([index.get(v, -1) for v in values], dtype=np.int64), names


def _check_spellings(names: Sequence[str], where: str) -> None:
    """Refuse names that differ only in case or spacing ("normal", "Normal"): one
    class written two ways would become two classes and shift the ids of the rest.
    Classes meant to differ so are listed with ``--classes`` (not checked)."""
    seen: dict[str, str] = {}
    for name in names:
        key = " ".join(name.split()).casefold()
        if key in seen:
            raise DataError(f"{where}: class names {seen[key]!r} and {name!r} differ "
                            f"only in case or spacing: one class written two ways? "
                            f"Write them alike (or, if they are two classes, list "
                            f"every class with --classes)")
        seen[key] = name


def check_classes(classes: Sequence[str], where: str) -> list[str]:
    """``--classes``: distinct, non-empty names, at most as many as label ids."""
    names = [str(c).strip() for c in classes]
    if not names or any(not n for n in names) or len(set(names)) != len(names) \
            or len(names) > LABEL_MAX + 1:
        raise DataError(f"{where}: --classes {names[:10]} must be distinct, non-empty "
                        f"class names (at most {LABEL_MAX + 1})")
    return names


def check_named(ids: np.ndarray, classes: Sequence[str], where: str) -> list[str]:
    """Class ids named by ``classes``: every known id must have a name."""
    names = check_classes(classes, where)
    if ids.size and int(ids.max()) >= len(names):
        raise DataError(f"{where}: class id {int(ids.max())} has no name in --classes "
                        f"({len(names)} names: ids 0..{len(names) - 1})")
    return names


def label_hint(a: np.ndarray) -> str:
    """How to make class ids of labels saved in another form."""
    if a.ndim == 2 and a.shape[1] > 1 and a.dtype.kind in "iubf":
        return "; one-hot rows? save a.argmax(axis=1)"
    if a.ndim != 1:
        return ""
    if a.dtype.kind == "f" and np.isfinite(a).all() and (a == np.round(a)).all():
        return "; whole numbers: save a.astype(np.int64)"
    if a.dtype.kind in "USO":
        return ("; names or other values: save class ids, e.g. "
                "np.unique(a, return_inverse=True)[1]")
    if a.dtype.kind == "f":  # a continuous variable (a position, a speed)
        return ("; a continuous value (a position, a time)? probes and coherence "
                "classify: bin it, e.g. np.digitize(a, np.linspace(a.min(), a.max(), "
                "11)[1:-1]) for 10 bins, and decode the value itself from `mmvm encode`'s "
                "latents")
    return ""


def _fraction(text: str) -> bool:
    """A finite number that is not whole (``"-0.0021"``, ``"3.5"``)."""
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and not value.is_integer()


def _int_or_none(text: str) -> int | None:
    """An id written as a whole number, also as a float (CheXpert's CSVs write
    ``1.0``, ``0.0``, ``-1.0``: ids, not the three class names they sorted into)."""
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            return None
        return int(value) if value.is_integer() else None
