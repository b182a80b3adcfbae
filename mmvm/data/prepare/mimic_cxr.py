"""MIMIC-CXR-JPG (PhysioNet, v2.0.0/2.1.0) -> one site per view: frontal, lateral.

Published layout::

    <src>/mimic-cxr-2.0.0-metadata.csv   dicom_id, subject_id, study_id, ViewPosition
    <src>/mimic-cxr-2.0.0-chexpert.csv   subject_id, study_id, 14 CheXpert labels
    <src>/files/p<2 digits>/p<subject_id>/s<study_id>/<dicom_id>.jpg

(either CSV may be gzipped, ``.csv.gz``). Recipe (docs/protocol.md, "MIMIC-CXR"):

- views: frontal = ``AP`` or ``PA``, lateral = ``LATERAL`` or ``LL``; every frontal x
  lateral pair of one study is a sample, id ``<study_id>_<frontal>_<lateral>``
  (from the metadata CSV alone: ``view=`` writes one site, reading only its JPEGs);
- labels: the 14 CheXpert columns, 1 -> 1 and uncertain (-1), 0 and blank -> 0 (the
  authors'; ``uncertain`` chooses another policy for -1),
  stored as ``label.<snake_case name>`` (the mapping is in the metadata); a study
  without a CheXpert row gets -1 (unknown) in every label column;
- split 80/10/10 by patient (``subject_id``), seeded, so no patient spans two splits;
- images: grayscale, resized to ``size x size`` (aspect ratio not kept; the paper
  uses 224), uint8 ``[1, size, size]``, scale 255; ``authors_images``: the central
  square, resized, histogram-equalised, as the authors' ``prepare_dataset.py``.

Output: ``<out>/frontal/{train,val,test}.parquet`` and ``<out>/lateral/...``; the two
sites' files of one split hold the same sample ids in the same order, so
:meth:`MultimodalDataset.from_parquet` joins them. Images of a study are decoded
once even when they appear in several pairs. Each file is streamed one row group
at a time (:func:`site_chunks`): memory holds a row group of images, never a split.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from mmvm.data.prepare import (
    Progress,
    batched,
    final_paths,
    reported,
    staged_output,
    step_fn,
)
from mmvm.data.prepare.images import load_image
from mmvm.data.store import DataError, SiteChunk, write_site_table_batches

CHEXPERT = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
            "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity",
            "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
            "Pneumothorax", "Support Devices")
VIEWS = {"frontal": ("AP", "PA"), "lateral": ("LATERAL", "LL")}
SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
METADATA, LABELS = "mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-chexpert.csv"


def label_column(name: str) -> str:
    """``"Enlarged Cardiomediastinum"`` -> ``"label.enlarged_cardiomediastinum"``."""
    return "label." + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _read_csv(src: Path, name: str, required: tuple[str, ...]) -> list[dict]:
    for path in (src / name, src / (name + ".gz")):
        if path.is_file():
            break
    else:
        raise DataError(f"{src / name}: missing (nor {name}.gz)")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: missing columns {missing} "
                                f"(has {reader.fieldnames})")
            return [dict(r, _row=i) for i, r in enumerate(reader)]
    except UnicodeDecodeError as err:  # the codec's words name no file
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); "
                        f"the published CSVs are UTF-8: download it again") from None


UNCERTAIN = {"zeros": 0, "ones": 1, "ignore": -1}  # CheXpert's U-Zeros, U-Ones, U-Ignore


def _label_value(text: str, path: str, row: int, col: str, uncertain: str = "zeros"
                 ) -> int:
    """One CheXpert cell: 1 -> 1; 0 and blank (not mentioned) -> 0; -1 (uncertain) by
    ``uncertain``: 0 as the authors, 1, or -1 (unknown: left out of that probe)."""
    text = (text or "").strip()
    if text == "":
        return 0
    try:
        v = int(float(text))
    except ValueError:
        v = None
    if v not in (1, 0, -1):
        raise DataError(f"{path}: column '{col}', row {row}: {text!r} is not 1, 0, -1 "
                        f"or blank")
    return UNCERTAIN[uncertain] if v == -1 else v


def patient_split(subjects: list[str], seed: int) -> dict[str, str]:
    """subject -> split: 80/10/10 of the sorted unique subjects, seeded shuffle."""
    uniq = sorted(set(subjects))
    perm = np.random.default_rng([seed, 7]).permutation(len(uniq))
    n_train = int(round(SPLITS["train"] * len(uniq)))
    n_val = int(round(SPLITS["val"] * len(uniq)))
    out = {}
    for rank, i in enumerate(perm):
        out[uniq[i]] = ("train" if rank < n_train else
                        "val" if rank < n_train + n_val else "test")
    return out


def site_chunks(rows: list[tuple[str, str, str, str, str]], site: str,
                labels: dict[str, list[int]],
                image: Callable[[tuple[str, str, str]], np.ndarray],
                n: int, unreadable: list[str] | None = None) -> Iterator[SiteChunk]:
    """One site's file, ``n`` rows at a time, each chunk decoded when it is asked for.

    ``rows``: ``(split, study, subject, frontal dicom, lateral dicom)`` grouped by
    study; ``image((subject, study, dicom))`` decodes to uint8 ``[1, size, size]``;
    ``labels``: study -> 14 CheXpert values (a study without one gets -1s). A study's
    images are decoded once, even when the study spans two chunks. ``unreadable``
    (a list): a pair whose image does not decode is left out and the error added
    there, instead of raised.
    """
    pos = 3 if site == "frontal" else 4
    cache: dict[str, np.ndarray | None] = {}
    last_study, yielded = None, False
    for chunk in batched(rows, n):
        x, part = [], []
        for row in chunk:
            study, subject, dicom = row[1], row[2], row[pos]
            if study != last_study:  # rows are grouped by study
                cache, last_study = {}, study
            if dicom not in cache:
                cache[dicom] = _decoded(image, (subject, study, dicom), unreadable)
            if cache[dicom] is not None:
                x.append(cache[dicom])
                part.append(row)
        if not part:
            continue
        yielded = True
        y = np.array([labels.get(r[1], [-1] * len(CHEXPERT)) for r in part], np.int64)
        yield SiteChunk(
            [f"{r[1]}_{r[3]}_{r[4]}" for r in part], {site: np.stack(x)},
            {label_column(c): y[:, j] for j, c in enumerate(CHEXPERT)},
            {"subject_id": np.array([int(r[2]) for r in part], np.int64),
             "study_id": np.array([int(r[1]) for r in part], np.int64)})
    if rows and not yielded:
        raise DataError(f"no {site} image of the {rows[0][0]} split decodes ("
                        f"{len(unreadable or [])} tried, e.g. {(unreadable or ['?'])[0]})")


def _image(path: Path, size: int, authors: bool) -> np.ndarray:
    """One X-ray as uint8 ``[1, size, size]``: resized whole, or the authors' way."""
    if not authors:
        return load_image(path, "L", size)
    from PIL import Image, ImageOps

    img = load_image(path, "L", size, fit="crop")
    return np.asarray(ImageOps.equalize(Image.fromarray(img[0])))[None]


def _decoded(image: Callable, key: tuple[str, str, str], unreadable: list[str] | None
             ) -> np.ndarray | None:
    try:
        return image(key)
    except DataError as err:
        if unreadable is None:
            raise DataError(f"{err}; --skip-missing leaves out the pairs whose JPEG is "
                            f"missing or does not decode, and names them") from None
        unreadable.append(str(err))
        return None


def prepare_mimic_cxr(src: str | os.PathLike, out_dir: str | os.PathLike, *,
                      size: int = 64, seed: int = 0, skip_missing: bool = False,
                      view: str | None = None, authors_images: bool = False,
                      uncertain: str = "zeros",
                      row_group_size: int = 256,
                      progress: Progress | None = None,
                      notes: list[str] | None = None) -> dict[str, Path]:
    """Pair the views of each study and write the frontal and lateral site files.

    Parameters
    ----------
    src : MIMIC-CXR-JPG root (the CSVs and ``files/``).
    out_dir : output folder; written atomically (nothing on error).
    size : output image side in pixels (paper: 224).
    seed : seeds the patient split.
    skip_missing : drop pairs whose JPEG is absent or does not decode (a partial or
        damaged download) instead of raising; the number of absent ones is recorded
        in the metadata, and ``notes`` names the undecodable ones.
    view : "frontal" or "lateral": write only that site's files, reading only that
        view's JPEGs (a hospital that holds one view). Sample ids and splits come from
        the metadata CSV alone, so two sites that prepare their view from the same
        CSV name the same studies the same way.
    authors_images : the MMVM authors' image recipe (agostini335/mmvm-mimic
        ``prepare_dataset.py``): the central square, resized, its histogram
        equalised; default: the whole image resized (aspect not kept), as read.
    uncertain : CheXpert's uncertain (-1) findings as ``"zeros"`` (the authors'),
        ``"ones"``, or ``"ignore"`` (unknown: each probe leaves them out).

    notes : a list the preparer adds what it left out to (studies without a pair,
        other view positions, empty splits, dropped pairs), for the user.

    Returns
    -------
    ``{"frontal.train": path, "lateral.train": path, ...}``.
    """
    notes = [] if notes is None else notes
    src = Path(src)
    if view is not None and view not in VIEWS:
        raise DataError(f"view {view!r}: choose one of {sorted(VIEWS)}")
    if uncertain not in UNCERTAIN:
        raise DataError(f"uncertain {uncertain!r}: choose one of {list(UNCERTAIN)}")
    views = [view] if view else list(VIEWS)
    meta_rows = _read_csv(src, METADATA, ("dicom_id", "subject_id", "study_id",
                                          "ViewPosition"))
    lab_rows = _read_csv(src, LABELS, ("subject_id", "study_id", *CHEXPERT))
    lab_path = str(src / LABELS)
    labels = {}
    for r in lab_rows:
        labels[r["study_id"]] = [_label_value(r[c], lab_path, r["_row"], c, uncertain)
                                 for c in CHEXPERT]
    studies: dict[str, dict] = defaultdict(lambda: {"frontal": [], "lateral": []})
    others: Counter[str] = Counter()
    seen: dict[str, int] = {}
    for r in meta_rows:
        first = seen.setdefault(r["dicom_id"], r["_row"])
        if first != r["_row"]:  # a pair would be a sample twice (its id in two rows)
            raise DataError(f"{src / METADATA}: dicom_id {r['dicom_id']!r} is listed on "
                            f"lines {first + 2} and {r['_row'] + 2}; one line per image")
        view = (r["ViewPosition"] or "").strip().upper()
        for site, codes in VIEWS.items():
            if view in codes:
                s = studies[r["study_id"]]
                s["subject"] = r["subject_id"]
                s[site].append(r["dicom_id"])
        others.update([view or "blank"] * all(view not in c for c in VIEWS.values()))
    if others:
        notes.append(f"{sum(others.values())} images of other view positions left out "
                     f"({', '.join(f'{v} {n}' for v, n in others.most_common(5))})")
    pairs = []  # (split, study, subject, frontal dicom, lateral dicom)
    split_of = patient_split([s["subject"] for s in studies.values()], seed)
    for study in sorted(studies, key=int):
        s = studies[study]
        for f in sorted(s["frontal"]):
            for lat in sorted(s["lateral"]):
                pairs.append((split_of[s["subject"]], study, s["subject"], f, lat))
    single = sum(not (s["frontal"] and s["lateral"]) for s in studies.values())
    if single:
        notes.append(f"{single} of {len(studies)} studies have one view only: no pair, "
                     f"left out")
    if not pairs:
        raise DataError(f"{src / METADATA}: no study has both a frontal (AP/PA) and a "
                        f"lateral (LATERAL/LL) image")

    def jpg(subject: str, study: str, dicom: str) -> Path:
        return src / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" \
            / f"{dicom}.jpg"

    dropped = 0
    if skip_missing:
        cols = [3 + list(VIEWS).index(v) for v in views]
        kept = [p for p in pairs if all(jpg(p[2], p[1], p[c]).is_file() for c in cols)]
        dropped, pairs = len(pairs) - len(kept), kept
        if not pairs:
            raise DataError(f"{src / 'files'}: no {' and '.join(views)} JPEG of any pair "
                            f"was found (--skip-missing dropped all {dropped}); is SRC "
                            f"the folder that holds files/?")
        if dropped:
            notes.append(f"{dropped} pairs left out: a {' or '.join(views)} JPEG is "
                         f"missing (--skip-missing)")
    step = step_fn(progress, len(pairs) * len(views))
    done, paths = 0, {}
    unreadable: list[str] | None = [] if skip_missing else None
    with staged_output(out_dir) as stage:
        image_recipe = (f"grayscale, central square resized to {size}x{size} (bicubic), "
                        f"histogram equalised (the authors')") if authors_images else \
            f"grayscale, resized to {size}x{size} (bicubic, aspect not kept)"
        for split in SPLITS:
            rows = [p for p in pairs if p[0] == split]
            if not rows:
                notes.append(f"no {split}.parquet written: no pair falls in the {split} "
                             f"split (few patients, or every pair of its patients was "
                             f"left out)")
                continue
            for site in views:
                meta = {"name": "mimic-cxr-jpg", "source": str(src.resolve()),
                        "site": site, "views": list(VIEWS[site]), "split": split,
                        "n": len(rows), "seed": seed, "size": size,
                        "labels": {label_column(c): c for c in CHEXPERT},
                        "recipe": {"pairs": "every frontal x lateral pair of a study",
                                   "labels": f"1 -> 1; 0, blank -> 0; -1 (uncertain) "
                                             f"-> {UNCERTAIN[uncertain]} ({uncertain}); "
                                             f"study without CheXpert row -> -1",
                                   "split": "80/10/10 by subject_id, "
                                            "default_rng([seed, 7])",
                                   "image": image_recipe},
                        "dropped_missing_pairs": dropped,
                        # a patient's pairs are not independent samples: probes'
                        # intervals and cross-validated reads count patients
                        "group_column": "subject_id",
                        "created_by": "mmvm.data.prepare.mimic_cxr"}
                chunks = site_chunks(rows, site, labels,
                                     lambda p: _image(jpg(*p), size, authors_images),
                                     row_group_size, unreadable)
                paths[f"{site}.{split}"] = write_site_table_batches(
                    stage / site / f"{split}.parquet",
                    reported(chunks, step, f"reading {split} {site}", done), meta,
                    row_group_size=row_group_size)
                done += len(rows)
    if unreadable:
        notes.append(f"{len(unreadable)} images do not decode; their rows are left out "
                     f"of that view's file (a pair keeps its other view, as a sample with "
                     f"one modality) (--skip-missing): " + "; ".join(unreadable[:5])
                     + (f"; ... ({len(unreadable)} in all)" if len(unreadable) > 5 else ""))
    return final_paths(paths, stage, out_dir)
