"""How many samples couple the modalities: what a join of site files by sample id
gives, centrally (``mmvm train`` on several folders) or federated (the alignment).

An id scheme that does not match across sites (one site prepared without its ids,
another seed) still joins and trains, into (almost) uncoupled unimodal models; these
counts, and the note below them, are where it shows.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mmvm.data.store_format import DataError

OVERLAP_NOTE = 0.9  # the share of a modality's samples that should be held with another


def coupling_counts(mask: np.ndarray, names: Sequence[str]) -> dict:
    """``mask`` [N, M] (sample has modality): samples, per modality, per modality those
    held with another modality too ("coupled"), held with two or more, with all."""
    mask = np.asarray(mask, dtype=bool)
    held = mask.sum(1)
    return {"samples": int(mask.shape[0]),
            "per_modality": {m: int(c) for m, c in zip(names, mask.sum(0), strict=True)},
            "coupled": {m: int((mask[:, j] & (held >= 2)).sum())
                        for j, m in enumerate(names)},
            "multimodal": int((held >= 2).sum()), "complete": int((held == len(names)).sum())}


def weakly_coupled(per_modality: Mapping[str, int], coupled: Mapping[str, int]
                   ) -> list[str]:
    """Modalities of which fewer than :data:`OVERLAP_NOTE` of the samples are held
    with another modality (those held with none among them)."""
    return [m for m, n in per_modality.items()
            if n and coupled.get(m, 0) < OVERLAP_NOTE * n]


def weak_coupling_note(per_modality: Mapping[str, int], coupled: Mapping[str, int] | None
                       ) -> str | None:
    """A note naming each modality of which fewer than :data:`OVERLAP_NOTE` of the
    samples are held with another modality, else None (also without ``coupled``: an
    older record)."""
    if coupled is None or len(per_modality) < 2:
        return None
    alone = set(uncoupled(per_modality, coupled))  # warned of on their own
    weak = [f"{m} {coupled.get(m, 0)} of {per_modality[m]}, "
            f"{coupled.get(m, 0) / per_modality[m]:.0%}"
            for m in weakly_coupled(per_modality, coupled) if m not in alone]
    if not weak:
        return None
    return (f"not every sample is held with another modality ({'; '.join(weak)}); if the "
            f"sites should hold the same samples, check that they prepared their data alike "
            f"(same preparer, ids and metadata, and the same train/test split options: "
            f"--seed, --test-fraction, and groups all sites share: a trial or patient "
            f"id, not each site's own numbering)")


def uncoupled(per_modality: Mapping[str, int], coupled: Mapping[str, int] | None
              ) -> list[str]:
    """Modalities none of whose samples is held with another modality while others
    are coupled: such a modality trains as an independent VAE (its ids match no one
    else's: prepared without --ids, or with other ids)."""
    if coupled is None or len(per_modality) < 2 or not any(coupled.values()):
        return []
    return [m for m, n in per_modality.items() if n and not coupled.get(m, 0)]


def uncoupled_warning(per_modality: Mapping[str, int], coupled: Mapping[str, int] | None
                      ) -> str | None:
    alone = uncoupled(per_modality, coupled)
    if not alone:
        return None
    one = len(alone) == 1
    return (f"{', '.join(alone)} share{'s' if one else ''} no sample with another "
            f"modality: {'it trains as an independent VAE' if one else 'each trains as an independent VAE'}, "
            f"coupled to nothing; {'its' if one else 'their'} sample ids match none of the "
            f"others' (prepared without --ids, or with ids written another way)")


def split_fingerprint(train: str | Path, test: str | Path) -> str:
    """12 hex digits of the sorted sample ids of a site's train and test files: sites
    prepared apart (one lab per rat) that must pair the same samples and split them
    alike print the same, whatever settings or library versions got them there."""
    digest = hashlib.sha256()
    for path in (train, test):
        digest.update(("\n".join(sorted(_sample_ids(path))) + "\n--\n").encode())
    return digest.hexdigest()[:12]


def _sample_ids(path: str | Path) -> set[str]:
    """A site file's sample ids (its ``sample_id`` column only); none for no file."""
    if not Path(path).is_file():
        return set()
    return set(pq.read_table(path, columns=["sample_id"]).column(0).to_pylist())


def split_like(sample_ids: Sequence[str], folder: str | Path, fallback: np.ndarray
               ) -> tuple[np.ndarray, int]:
    """``(held out, taken)``: each sample's side as another site's files in ``folder``
    have it (its ``train.parquet``: trained; any other split file, ``test``, ``val``:
    held out), ``fallback``'s side for a sample that site lacks, and how many sides
    were taken from it. A third site (a hospital's lab values beside the X-ray
    sites) so splits its shared samples as they are split there, whatever the
    preparer and its settings."""
    files = {p.stem: p for p in sorted(Path(folder).glob("*.parquet"))}
    if "train" not in files:
        raise DataError(f"--split-from {folder}: no train.parquet there (a site folder "
                        f"of another preparer's output)")
    trained = _sample_ids(files["train"])
    held = set().union(*(_sample_ids(p) for k, p in files.items() if k != "train"))
    out, taken = np.array(fallback, dtype=bool), 0
    for i, sid in enumerate(sample_ids):
        if sid in trained or sid in held:
            out[i], taken = sid in held, taken + 1
    if not taken:
        raise DataError(f"--split-from {folder}: none of its {len(trained | held):,} "
                        f"sample ids is among these (e.g. {sorted(trained)[0]!r} there, "
                        f"{sample_ids[0]!r} here): write the ids as that site does")
    return out, taken


def split_leak(train: Sequence, test: Sequence) -> str | None:
    """Why the folders whose train files are ``train`` and test files ``test`` (the
    same order) split their shared samples differently, or None: a sample in one
    folder's test split and another's train split is trained on through the joint
    prior and then scored as unseen (sites prepared with another --seed,
    --test-fraction or --groups). Reads the ``sample_id`` column only."""
    trains, tests = [_sample_ids(p) for p in train], [_sample_ids(p) for p in test]
    for i, held_out in enumerate(tests):
        for j, trained in enumerate(trains):
            both = held_out & trained if i != j else set()
            if both:
                return (f"{len(both)} of the {len(held_out)} test samples of {test[i]} are "
                        f"in the train split of {train[j]} (e.g. {sorted(both)[0]!r}): "
                        f"trained on through the joint prior, then scored as unseen. "
                        f"Prepare every site with the same --seed, --test-fraction and "
                        f"groups (--groups, --group-column), each sample in the same "
                        f"group at every site (a trial or patient id the sites share, "
                        f"not each site's own numbering), or prepare it with "
                        f"--split-from <the other site's folder> (another preparer's "
                        f"split, MIMIC-CXR's by patient say)")
    return None


def unmatched_ids(ids: Sequence[str], mask: np.ndarray, names: Sequence[str],
                  weak: Sequence[str]) -> str | None:
    """For each of the ``weak`` modalities: two of the ids it holds alone and two that
    only the others hold, and which of them differ only in leading zeros, case or
    spaces (``007`` and ``7``: one site's export zero-padded them). None when no
    sample of those modalities is held alone."""
    mask = np.asarray(mask, dtype=bool)
    held = mask.sum(1)
    ids = np.asarray(ids, dtype=object)

    def plain(i: str) -> str:  # zeros that lead a run of digits dropped: t007 -> t7
        return re.sub(r"(?<!\d)0+(?=\d)", "", str(i).strip().lower())

    said = []
    for m in weak:
        j = list(names).index(m)
        mine = ids[mask[:, j] & (held == 1)]
        theirs = ids[~mask[:, j] & (held >= 1)]
        if not len(mine):
            continue
        line = f"{m} alone holds {', '.join(map(repr, mine[:2]))}"
        if len(theirs):
            line += f", the others {', '.join(map(repr, theirs[:2]))}"
        index = {plain(i): i for i in theirs}
        alike = [(i, index[plain(i)]) for i in mine if plain(i) in index][:1]
        if alike and not any("differ only" in d for d in said):  # said once
            a, b = alike[0]
            line += (f" ({a!r} and {b!r} differ only in leading zeros, case or spaces: "
                     f"write the ids alike at every site)")
        said.append(line)
    return "; ".join(said) or None
