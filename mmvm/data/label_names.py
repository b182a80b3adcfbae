"""What each label id means, per file (``label_names`` in the ``mmvm.dataset``
metadata, written where labels were given as names), compared where files are
joined by sample id."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from mmvm.data.store import DataError, read_site_meta


def check_label_names(paths: Sequence[str | os.PathLike]) -> None:
    """Files joined by sample id must mean the same classes by the same label ids:
    labels given as names become ids in sorted order per prepared folder, so a
    site that has no "effusion" case numbers "normal" 0 where another numbers it 1
    (``label_names`` in the ``mmvm.dataset`` metadata; files without names, ids
    given as ids, are not compared). One list that begins with the other numbers the
    classes both name alike (``--classes`` lists may grow at the end)."""
    seen: dict[str, tuple[list, str]] = {}
    for p in paths:
        named = read_site_meta(p)["dataset"].get("label_names") or {}
        for column, names in (named.items() if isinstance(named, dict) else ()):
            first = seen.setdefault(column, (list(names), str(p)))
            short, long = sorted((first, (list(names), str(p))), key=lambda x: len(x[0]))
            if long[0][:len(short[0])] == short[0]:  # one id per name both have
                seen[column] = long  # the longer list, where it was
            else:
                raise DataError(
                    f"{first[1]} and {p} number the classes of {column!r} differently "
                    f"({_ids(first[0])} vs {_ids(names)}): joined, one id would mean two "
                    f"classes; prepare both with the same --classes "
                    f"{column.removeprefix('label.')}=...")


def bare_ids(columns: Mapping[str, Sequence[str]]) -> list[str]:
    """One warning per label column whose classes some files name and others give as
    bare ids (``columns``: file -> its label columns): joined, a bare id means the
    class of that number in the named files' list, which holds only if the site that
    wrote it numbered its classes in that order (a lab's odor codes happen to sort
    like the names, or not)."""
    named: dict[str, dict[str, list[str]]] = {}
    bare: dict[str, list[str]] = {}
    for path, cols in columns.items():
        names = read_site_meta(path)["dataset"].get("label_names") or {}
        for c in cols:
            if isinstance(names, dict) and names.get(c):
                named.setdefault(c, {})[str(path)] = list(names[c])
            else:
                bare.setdefault(c, []).append(str(path))
    out = []
    for c in sorted(set(named) & set(bare)):
        names = max(named[c].values(), key=len)
        key = "" if c == "label" else f"{c.removeprefix('label.')}="
        out.append(f"label column {c!r}: {', '.join(named[c])} name its classes "
                   f"({_ids(names)}); {', '.join(bare[c])} give bare ids, which are "
                   f"joined as those classes only if they were numbered in that order: "
                   f"prepare them with --classes {key}{','.join(names)}")
    return out


def label_names_for(paths: Sequence[str | os.PathLike], column: str) -> list[str] | None:
    """What the ids of label ``column`` mean (the longest ``label_names`` list any of
    ``paths`` holds for it: :func:`check_label_names` keeps them consistent); None
    where no file names them (ids given as ids)."""
    found: list[str] = []
    for p in paths:
        named = read_site_meta(p)["dataset"].get("label_names") or {}
        names = named.get(column) if isinstance(named, dict) else None
        if isinstance(names, list) and len(names) > len(found):
            found = [str(n) for n in names]
    return found or None


def class_names(paths: Sequence[str | os.PathLike], column: str) -> list[str]:
    """:func:`label_names_for`, ``[]`` where no file names them or the files cannot
    be read (an evaluation of data held in memory)."""
    try:
        return label_names_for(paths, column) or []
    except (OSError, KeyError, DataError):
        return []


def _ids(names) -> str:
    text = ", ".join(f"{i}={n}" for i, n in enumerate(names))
    return text if len(text) <= 80 else text[:77] + "..."
