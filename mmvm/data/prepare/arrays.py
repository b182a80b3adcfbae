"""Your own arrays -> site Parquet: one ``.npy`` per modality, rows = samples.

For data no preparer knows: a lab's recordings, a hospital's own modality. Each
modality is a NumPy file ``[N, *shape]`` (uint8 images ``[N, C, H, W]`` with C = 1 or
3 stay bytes, scaled by 255; anything else becomes float32 as is); the sample ids are a
text file (one per line) or a ``.npy`` of N strings or integers, in the arrays' row
order; labels are integer ``.npy`` files ``[N]`` (class ids >= 0, -1 for unknown).

The train/test split is decided per sample id, not per row: a sample is held out
when a hash of (seed, id) falls below ``test_fraction``. So sites that prepare their
own modalities separately, with their rows in any order, put every shared sample in
the same split, as federated alignment needs. Samples that are not independent (the
overlapping time windows of one trial, several images of one patient) are split by
*group* instead (``groups``: one group id per row, e.g. the trial): the hash is of
(seed, group), so no group has samples on both sides and the test split measures
what a model learnt, not what it saw of the same trial.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from mmvm.data.coupling import split_like
from mmvm.data.prepare import Progress, final_paths, staged_output, step_fn
from mmvm.data.prepare.label_values import check_named, class_ids, label_hint
from mmvm.data.prepare.npy import load_npy
from mmvm.data.prepare.standardize import Scale, apply, scales
from mmvm.data.store import DataError, SiteChunk, write_site_table_batches
from mmvm.data.store_format import GROUP_COLUMN, LABEL_MAX, id_problem, show

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a modality: a column and a bare TOML key


def is_image(a: np.ndarray) -> bool:
    """uint8 ``[N, C, H, W]`` with C = 1 or 3: kept as 0..255 bytes (scale 255); any
    other array is stored as float32 numbers as they are."""
    return a.dtype == np.uint8 and a.ndim == 4 and a.shape[1] in (1, 3)


def load_ids(path: str | os.PathLike) -> list[str]:
    """Sample ids from a text file (one per line, UTF-8, a byte-order mark dropped) or
    a ``.npy`` of strings or integers; surrounding blanks are dropped either way, so
    sites that wrote their ids differently still agree."""
    path = Path(path)
    if path.suffix == ".npy":
        arr = load_npy(path, what="sample ids")
        if arr.ndim != 1 or arr.dtype.kind not in "iuUS":
            raise DataError(f"{path}: sample ids must be a 1-D array of strings or "
                            f"integers, got {arr.dtype} {arr.shape}")
        try:
            return [(v.decode() if isinstance(v, bytes) else str(v)).strip()
                    for v in arr.tolist()]
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: sample ids are not UTF-8 ({e})") from None
    lines = text_lines(path)
    while lines and not lines[-1]:  # trailing blank lines are fine
        lines.pop()
    if "" in lines:  # within: a lost id or a stray line? Rows would pair by guesswork
        raise DataError(f"{path}: line {lines.index('') + 1} is blank; give one id per "
                        "line, one line per row of the arrays, without blank lines")
    return lines


def text_lines(path: Path, commas: bool = True) -> list[str]:
    """A text file of one value per line, each stripped. A table (a ``.csv`` whose
    first line holds a comma, a first line with a tab, or, with ``commas``, a comma
    between words: ids have none, a class name may) is refused: its header would be
    a row and each line a whole record (a lab passed its trials.csv as --ids: "120
    rows, where the other inputs have 121")."""
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable UTF-8 text file ({e})") from None
    first = lines[0] if lines else ""
    if path.suffix.lower() == ".csv" and "," in first:  # a one-column one is a list
        raise DataError(f"{path}: a table, where one value per line is read; prepare "
                        f"your tables with `mmvm data prepare table` (an id column, a "
                        f"label column, the numbers in the others), or give one column")
    if "\t" in first or commas and len(first.split(",")) > 1 and all(
            w.strip() for w in first.split(",")):
        raise DataError(f"{path}: line 1 ({first[:60]!r}) holds several values, where "
                        f"one value per line is read: a table's header? Give one value "
                        f"per line, or prepare the table with `mmvm data prepare table`")
    return lines


def load_labels(path: Path, classes: Sequence[str] | None = None
                ) -> tuple[np.ndarray, list[str] | None]:
    """Labels of a ``.npy`` (class ids, or strings) or a text file (one per line):
    class ids as they are (also written as text); names (``"pacemaker"``) as ids in
    sorted order, or in the order of ``classes`` where given, and the names, so the
    files keep what each id means. An empty entry is unknown (-1); ids and names
    mixed are refused."""
    if path.suffix == ".npy":
        a = load_npy(path, what="labels")
        if a.ndim != 1 or a.dtype.kind not in "US":
            named = None
            if classes is not None and a.ndim == 1 and a.dtype.kind in "iu":
                named = check_named(a, classes, str(path))
            return a, named
        values = [(v.decode() if isinstance(v, bytes) else str(v)).strip() for v in a]
    else:
        values = text_lines(path, commas=False)
        while values and not values[-1]:
            values.pop()
    return class_ids(values, str(path), classes)


def counts_as_image(name: str, a: np.ndarray) -> str | None:
    """A note where a grey uint8 ``[N, 1, H, W]`` taken for an image (stored 0..1,
    scale 255) looks like counts, its values all below 16 (a walkthrough's uint8
    spikes [N, 1, neurons, bins] became pixels, refused by every image net); a
    colour image, or a grey one that uses its range, is an image."""
    top = int(a[: 4096].max()) if len(a) else 0
    if a.shape[1] != 1 or top > 15:
        return None
    return (f"{name}: uint8 {list(a.shape[1:])} is read as an image (pixels 0..255 -> "
            f"0..1; its largest value {top}); if it holds counts (neurons x bins), "
            f"save it as int16 or int32, or as [N, neurons, bins]")


def unique_labels(cols: Mapping[str, np.ndarray], least: int = 20) -> list[str]:
    """A note for each label column with a class of its own for every labelled row
    (of at least ``least``): ids or free text, not classes; a probe of it would be
    at chance by construction."""
    out = []
    for c, a in cols.items():
        known = (a := np.asarray(a))[a >= 0] if a.dtype.kind in "iu" else a
        if len(known) >= least and len(np.unique(known)) == len(known):
            out.append(f"{c}: each of its {len(known)} labelled samples is a class of its "
                       f"own: ids or free text, not classes (a probe of it is at chance "
                       f"by construction); was another file or column meant?")
    return out


def held_out(ids: list[str], test_fraction: float, seed: int) -> np.ndarray:
    """True for the ids in the test split: the same at every site, whatever the row
    order, for the same seed and fraction."""
    def unit(i: str) -> float:
        h = hashlib.blake2b(f"{seed}\x00{i}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "big") / 2.0 ** 64
    return np.array([unit(i) < test_fraction for i in ids], dtype=bool)


def prepare_arrays(out_dir: str | os.PathLike, modalities: Mapping[str, str | os.PathLike],
                   *, ids: str | os.PathLike | None = None,
                   labels: Mapping[str, str | os.PathLike] | None = None,
                   groups: str | os.PathLike | None = None,
                   test_fraction: float = 0.2, seed: int = 0, name: str = "arrays",
                   row_group_size: int = 1024, force: bool = False,
                   progress: Progress | None = None,
                   sources: Mapping[str, os.PathLike] | None = None,
                   classes: Mapping[str, Sequence[str]] | None = None,
                   standardize: Sequence[str] | bool = (),
                   scale_from: Mapping[str, Scale] | None = None,
                   notes: Sequence[str] = (),
                   group_source: str | None = None,
                   features: Mapping[str, Sequence[str]] | None = None,
                   preparation: Mapping | None = None,
                   split_from: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write ``train.parquet`` and ``test.parquet`` under ``out_dir`` (atomically:
    nothing on error). ``modalities``: name -> ``.npy``; ``labels``: column
    (``label`` or ``label.<name>``) -> ``.npy``; ``ids``: see :func:`load_ids`
    (default: the row numbers, which align only sites whose rows are the same
    samples in the same order); ``groups``: a group id per row, read as ``ids`` are,
    to split by group (module docstring); ``classes``: label column -> its class
    names in id order (the same at every site); ``standardize``: modalities z-scored
    per feature by the training split's mean and std (True: every one but images and
    non-negative integers, counts), both kept in the files' metadata
    (:mod:`mmvm.data.prepare.standardize`); ``scale_from``: another site's scales
    (its ``dataset.standardized``) to use instead of this site's own;
    ``group_source``: where the groups came from, as the metadata says it (default:
    the ``groups`` file's name); ``features``: a modality's feature names in order
    (a table's columns: sodium, platelets, ...), kept beside its scale; ``notes``: what a preparer changed or left out, kept in the metadata (the CLI
    prints them); ``preparation``: how images were decoded (``image_preparation``:
    :func:`~mmvm.data.prepare.images.load_image`'s settings, to read a new image as
    the files were made); ``split_from``: another site's folder whose split its
    shared samples take (:func:`~mmvm.data.coupling.split_like`). A folder that
    already holds site files is refused unless ``force``."""
    if not modalities:
        raise ValueError("give at least one modality (name=file.npy)")
    bad = [m for m in modalities if not NAME.fullmatch(m) or m.startswith("label")
           or m in ("sample_id", GROUP_COLUMN)]
    if bad:
        raise ValueError(f"modality names {bad}: use letters, digits, '_' and '-' (they "
                         f"become config keys), not 'sample_id', '{GROUP_COLUMN}' or "
                         f"'label...'")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction = {test_fraction}: must be in (0, 1)")
    if not force:
        _refuse_site_files(Path(out_dir))
    labels = labels or {}
    arrays = {m: load_npy(Path(p), mmap=True) for m, p in modalities.items()}
    classes = classes or {}
    stray = sorted(set(classes) - set(labels))
    if stray:
        raise ValueError(f"--classes for {stray}, which no --label gives (labels: "
                         f"{sorted(labels)})")
    loaded = {c: load_labels(Path(p), classes.get(c)) for c, p in labels.items()}
    cols = {c: a for c, (a, _) in loaded.items()}
    _check_shapes(arrays, cols, modalities, labels)
    given = load_ids(ids) if ids is not None else None
    n = _check_counts(arrays, cols, given, modalities, labels, ids)
    sample_ids = given if given is not None else [str(i) for i in range(n)]
    _check_labels(cols, labels, sample_ids)
    _check_ids(sample_ids, ids)
    group_of = _load_groups(groups, n) if groups is not None else None
    notes = [*notes, *unique_labels(cols)]
    test = held_out(group_of or sample_ids, test_fraction, seed)
    split_by = "sample id" if group_of is None else \
        f"group ({len(set(group_of))} groups from {group_source or Path(groups).name})"
    if split_from is not None:  # another site's sides for the samples it shares
        test, taken = split_like(sample_ids, split_from, test)
        split_by = (f"the split of {Path(split_from).resolve()} ({taken:,} of {n:,} "
                    f"samples; the others by {split_by})")
    images = [m for m, a in arrays.items() if is_image(a)]
    notes += [note for m in images if (note := counts_as_image(m, arrays[m]))]
    counts = [m for m, a in arrays.items()  # non-negative integers
              if a.dtype.kind == "u" or a.dtype.kind == "i" and a.min() >= 0]
    scaled = scales(arrays, [m for m in arrays if m not in images + counts]
                    if standardize is True else list(standardize or ()),
                    np.flatnonzero(~test), images, scale_from)
    meta = {"name": name, "seed": seed, "test_fraction": test_fraction,
            "split_by": split_by,
            "sources": {m: str(Path(p).resolve())
                        for m, p in (sources or modalities).items()},
            "source_dtypes": {m: str(a.dtype) for m, a in arrays.items()},
            "counts": [m for m in counts if m not in scaled],
            "label_names": {c: names for c, (_, names) in loaded.items() if names},
            **({"group_column": GROUP_COLUMN} if group_of is not None else {}),
            **({"features": {m: list(f) for m, f in features.items()}}
               if features else {}),
            **({"image_preparation": dict(preparation)} if preparation else {}),
            "created_by": "mmvm.data.prepare.arrays.prepare_arrays"} | (
                {"standardized": scaled} if scaled else {}) | (
                {"notes": list(notes)} if notes else {})
    step = step_fn(progress, 2)
    paths = {}
    with staged_output(out_dir) as stage:
        for k, (split, rows) in enumerate((("train", np.flatnonzero(~test)),
                                           ("test", np.flatnonzero(test)))):
            if len(rows) == 0:
                many = (f"{n} samples" if group_of is None else f"{n} samples in "
                        f"{len(set(group_of))} groups, each wholly in one split")
                raise DataError(f"the {split} split is empty ({many}, test_fraction "
                                f"{test_fraction}); give more samples"
                                f"{'' if group_of is None else ' or groups'} or another "
                                "fraction")
            step(f"writing {split} ({len(rows):,} samples)", k)
            chunks = _chunks(rows, sample_ids, arrays, cols, row_group_size, modalities,
                             scaled, group_of)
            paths[split] = write_site_table_batches(stage / f"{split}.parquet", chunks,
                                                    meta, row_group_size=row_group_size)
        step("done", 2)
    return final_paths(paths, stage, out_dir)


def _load_groups(path: str | os.PathLike, n: int) -> list[str]:
    """One group id per row (a text file: one per line, no blank lines; or a ``.npy``
    of N strings or integers); :class:`DataError` when they are not N."""
    try:
        groups = load_ids(path)
    except DataError as err:  # read as ids are: say what they were read as
        raise DataError(str(err).replace("sample ids", "group ids")) from None
    if len(groups) != n:
        raise DataError(f"{path}: {len(groups)} group ids, the arrays have {n} rows; "
                        f"give one group id (e.g. the trial) per row, in row order")
    return groups


def _refuse_site_files(out: Path) -> None:
    held = sorted(p.name for p in out.glob("*.parquet")) if out.is_dir() else []
    if held:
        raise DataError(f"{out}: already holds site files ({', '.join(held)}); give "
                        f"another output folder, or force (--force) to write "
                        f"train.parquet and test.parquet over them")


def _check_shapes(arrays: dict, cols: dict, mod_paths: Mapping,
                  label_paths: Mapping) -> None:
    for m, a in arrays.items():
        if a.ndim < 2:
            raise DataError(f"{mod_paths[m]}: modality {m!r} has shape {a.shape}; "
                            f"expected [N samples, *shape]")
        if a.dtype.kind not in "uif":
            raise DataError(f"{mod_paths[m]}: dtype {a.dtype}; expected numbers"
                            + (" (0/1 values: save them as float32, likelihood "
                               "'bernoulli')" if a.dtype == np.bool_ else ""))
    for c, a in cols.items():
        if a.ndim != 1 or a.dtype.kind not in "iu":
            raise DataError(f"{label_paths[c]}: label {c!r} must be [N] integers (class "
                            f"ids >= 0, -1 for unknown), got {a.dtype} {a.shape}"
                            + label_hint(a))


def _check_counts(arrays: dict, cols: dict, ids: list[str] | None, mod_paths: Mapping,
                  label_paths: Mapping, id_path) -> int:
    """N, the rows every input has; else :class:`DataError` naming the inputs that
    disagree with the majority, or with the sample ids when no count has a majority
    (all inputs, with their counts, when there are no ids either)."""
    inputs = ([(mod_paths[m], f"modality {m!r}", len(a)) for m, a in arrays.items()]
              + [(label_paths[c], f"label {c!r}", len(a)) for c, a in cols.items()]
              + ([(id_path, "sample ids", len(ids))] if ids is not None else []))
    counts = Counter(k for _, _, k in inputs).most_common()
    listed = ", ".join(f"{p} ({what}) {k}" for p, what, k in inputs)
    if len(counts) == 1:
        if counts[0][0] == 0:
            raise DataError(f"{', '.join(str(p) for p, _, _ in inputs)}: no samples (0 "
                            f"rows); a split needs at least one sample")
        return counts[0][0]
    if counts[0][1] > counts[1][1]:  # a majority
        n, others = counts[0][0], "the other inputs have"
    elif ids is not None:  # no majority: the ids say how many samples there are
        n, others = len(ids), f"the sample ids ({id_path}) are"
    else:
        raise DataError(f"the inputs disagree on the number of samples (rows per input: "
                        f"{listed}); every input needs one row per sample, in the same "
                        f"order")
    odd = "; ".join(f"{p}: {what} has {k} rows" for p, what, k in inputs if k != n)
    raise DataError(f"{odd}, where {others} {n} (rows per input: {listed}); every input "
                    f"needs one row per sample, in the same order")


def _check_labels(cols: dict, label_paths: Mapping, ids: list[str]) -> None:
    for c, a in cols.items():
        bad = a > LABEL_MAX if a.dtype.kind == "u" else (a < -1) | (a > LABEL_MAX)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(f"{label_paths[c]}: row {row} (sample {ids[row]!r}): label "
                            f"{c!r} is {a[row]}; labels are class ids 0..{LABEL_MAX}, "
                            f"or -1 for unknown")


def _check_ids(ids: list[str], id_path) -> None:
    """Every id as a site file needs it (``store_format.id_problem``) and unique, named
    by its line in a text ids file, else by its row: found here, not later as a row of
    a split in a staging folder that is gone by the time the user reads the error."""
    text = id_path is not None and Path(id_path).suffix != ".npy"
    place = (lambda row: f"line {row + 1}") if text else (lambda row: f"row {row}")
    first: dict[str, int] = {}
    for row, i in enumerate(ids):
        problem = "is empty (a blank line?)" if i == "" else id_problem(i)
        if problem:
            raise DataError(f"{id_path}: {place(row)}: sample id {show(i)} {problem}")
        if i in first:
            raise DataError(f"{id_path or 'row numbers'}: sample id {i!r} at "
                            f"{place(first[i])} and {place(row)}; ids must be unique")
        first[i] = row


def _chunks(rows: np.ndarray, ids: list[str], arrays: dict, cols: dict, size: int,
            sources: Mapping, scaled: Mapping[str, Scale],
            groups: list[str] | None = None) -> Iterator[SiteChunk]:
    """The rows in chunks of ``size``; each sample's group (trial, patient) kept in
    the carried column ``group``, for scores that count groups, not rows."""
    group_of = np.asarray(groups, dtype=str) if groups is not None else None
    for lo in range(0, len(rows), size):
        idx = rows[lo:lo + size]
        tensors = {}
        for m, a in arrays.items():
            part = np.asarray(a[idx])
            with np.errstate(over="ignore", invalid="ignore"):  # inf, NaN: named below
                tensors[m] = part if is_image(a) else apply(part, scaled[m]) \
                    if m in scaled else part.astype(np.float32)
            finite = np.isfinite(tensors[m].reshape(len(idx), -1))
            if not finite.all():
                row, at = (int(v) for v in np.argwhere(~finite)[0])
                where = ", ".join(map(str, np.unravel_index(at, a.shape[1:])))
                raise DataError(f"{sources[m]}: row {idx[row]} (counted from 0; sample "
                                f"{ids[idx[row]]!r}), value [{where}] of the row: NaN, "
                                f"inf, or beyond float32's range")
        yield SiteChunk([ids[i] for i in idx], tensors,
                        {c: a[idx].astype(np.int64) for c, a in cols.items()} or None,
                        {GROUP_COLUMN: group_of[idx]} if group_of is not None else None)
