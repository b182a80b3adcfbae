"""A MIMIC-CXR-JPG look-alike in the published layout, to rehearse a deployment.

MIMIC-CXR needs PhysioNet credentials; a hospital's IT staff can rehearse
``docs/deploy-two-hospitals.md`` end to end (prepare each view, keys, SuperLink,
SuperNodes, the run, the trained models) before the data arrives. The tree has what
``mmvm data prepare mimic_cxr`` reads: ``files/p<2>/p<subject>/s<study>/<dicom>.jpg``,
``mimic-cxr-2.0.0-metadata.csv`` and ``mimic-cxr-2.0.0-chexpert.csv``. The images are
grey sine patterns, not radiographs, and the findings random: a run on them tests
the procedure, never the model.

Three hand-made patients cover the preparer's cases (two frontal views in one study,
two laterals in another, a study without a lateral, a study without CheXpert row),
then ``extra`` patients with one PA and one LATERAL image each.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from mmvm.data.prepare import staged_output
from mmvm.data.prepare.mimic_cxr import CHEXPERT


def mimic_studies(extra: int = 20) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """subject -> study -> [(dicom, view)]: three hand-made patients (two frontal
    views in one study, two laterals in another, one study without a lateral), then
    ``extra`` patients with one PA and one LATERAL image each."""
    studies = {
        "10000001": {"50000001": [("d1", "PA"), ("d2", "LATERAL")],
                     "50000002": [("d3", "AP"), ("d4", "PA"), ("d5", "LL")]},
        "10000002": {"50000003": [("d6", "PA")]},  # no lateral: no sample
        "11000003": {"50000004": [("d7", "AP"), ("d8", "LATERAL"), ("d9", "LATERAL")]},
    }
    for s in range(4, 4 + extra):  # more patients so all three splits are populated
        studies[f"1{s:07d}"] = {f"6{s:07d}": [(f"f{s}", "PA"), (f"l{s}", "LATERAL")]}
    return studies



MAX_SIDE = 4096  # a look-alike's image side: a mistyped 100000 asked for 149 GiB


def mimic_tree(root, size=(40, 48), extra: int = 20, labels: str = "fixed",
               seed: int = 0) -> None:
    """Grey sine-pattern images (``size`` = width, height) for :func:`mimic_studies`
    and the two CSVs. Study 50000004 has no CheXpert row. ``labels``: ``"fixed"``
    gives every other study ``1, 0, -1, blank`` repeated; ``"random"`` draws each
    finding from {1, 1, 0, -1, blank} (seeded), so probes see both classes."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    meta_rows, lab_rows = [], []
    for subj, studies in mimic_studies(extra).items():
        for study, images in studies.items():
            d = root / "files" / f"p{subj[:2]}" / f"p{subj}" / f"s{study}"
            d.mkdir(parents=True)
            for dicom, view in images:
                yy, xx = np.mgrid[0:size[1], 0:size[0]] / max(size)
                fy, fx, ph = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 6)
                a = (127 + 100 * np.sin(fy * yy * 3 + fx * xx * 3 + ph)).astype(np.uint8)
                Image.fromarray(a, "L").save(d / f"{dicom}.jpg", quality=95)
                meta_rows.append([dicom, subj, study, "CHEST", view])
            if study != "50000004":  # one study without CheXpert row
                if labels == "random":
                    vals = list(rng.choice(["1.0", "1.0", "0.0", "-1.0", ""],
                                           size=len(CHEXPERT)))
                else:
                    vals = ["1.0", "0.0", "-1.0", ""] * 4
                lab_rows.append([subj, study, *vals[:len(CHEXPERT)]])
    with open(root / "mimic-cxr-2.0.0-metadata.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dicom_id", "subject_id", "study_id",
                    "PerformedProcedureStepDescription", "ViewPosition"])
        w.writerows(meta_rows)
    with open(root / "mimic-cxr-2.0.0-chexpert.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["subject_id", "study_id", *CHEXPERT])
        w.writerows(lab_rows)


def make_mimic_tree(out: str | Path, patients: int = 60, size: tuple[int, int] = (320, 256),
                    seed: int = 0) -> Path:
    """The look-alike tree under ``out`` (written aside, moved into place once complete);
    ``patients`` beyond the three hand-made ones, images ``size`` = (width, height),
    random findings. Returns ``out``."""
    if patients < 10:
        raise ValueError(f"patients = {patients}: at least 10, so that the preparer's "
                         f"train, validation and test splits can all get pairs (with "
                         f"few patients a split may still get none; prepare says so)")
    if min(size) < 16 or max(size) > MAX_SIDE:
        raise ValueError(f"size = {size[0]}x{size[1]}: images of 16 to {MAX_SIDE} pixels "
                         f"a side (MIMIC-CXR's JPEGs are about 2500 x 3000)")
    if Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder; give a new folder")
    with staged_output(out) as stage:
        mimic_tree(stage, size=size, extra=patients, labels="random", seed=seed)
    return Path(out)
