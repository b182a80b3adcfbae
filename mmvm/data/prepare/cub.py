"""CUB image-captions (CUB-200-2011 + Reed et al. 2016 captions) -> site Parquet.

Published layout::

    <src>/images.txt              "<image_id> <class folder>/<file>.jpg"
    <src>/train_test_split.txt    "<image_id> <1 = train | 0 = test>"
    <src>/images/<class>/<file>.jpg
    <src>/text/<class>/<file>.txt  ten captions, one per line (``text_c10/`` also read)

Modalities (as the authors' ``utils/CUBDataset.py``, thomassutter/mmvmvae):

- ``image``: uint8 ``[3, size, size]`` (scale 255), resized without keeping aspect;
- ``text``: float32 ``[32]`` word-token ids (scale 1; categorical likelihood reads
  them as class indices). Tokens: lower-cased words and single punctuation marks
  (regex ``[a-z0-9]+|[^\\sa-z0-9]``); the caption is cut to 31 tokens, then ``<eos>``,
  then ``<pad>`` to 32. Vocabulary: ``<exc>`` = 0 (rare/unknown word), ``<pad>`` = 1,
  ``<eos>`` = 2, then every word seen more than ``min_occ`` (3) times in the *train*
  captions, in order of first appearance. The vocabulary (index -> word) is in the
  metadata under ``vocab``.

One sample per (image, caption): id ``<image_id>-<k>``, ``label`` = class index
(0-based, the sorted class folders). Output ``<out>/{train,test}.parquet``, each
streamed about one row group of images at a time (never a whole split).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
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

SPECIALS = ("<exc>", "<pad>", "<eos>")
EXC, PAD, EOS = 0, 1, 2
TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def build_vocab(captions: list[str], min_occ: int = 3) -> list[str]:
    """Index -> word: the specials, then words seen more than ``min_occ`` times."""
    counts = Counter()
    order: dict[str, None] = {}
    for c in captions:
        for w in tokenize(c):
            counts[w] += 1
            order.setdefault(w, None)
    kept = [w for w in order if counts[w] > min_occ and w not in SPECIALS]
    return list(SPECIALS) + kept


def encode(text: str, w2i: dict[str, int], length: int = 32) -> np.ndarray:
    """Token ids ``[length]``: words (``<exc>`` if unknown), ``<eos>``, ``<pad>``s."""
    ids = [w2i.get(w, EXC) for w in tokenize(text)[:length - 1]] + [EOS]
    return np.array(ids + [PAD] * (length - len(ids)), dtype=np.float32)


def _read_pairs(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DataError(f"{path}: missing")
    out = {}
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(f"{path}: line {i}: expected two fields, got {line!r}")
        out[parts[0]] = parts[1]
    return out


def _captions(src: Path, rel: str, n: int) -> list[str]:
    stem = Path(rel).with_suffix(".txt")
    for d in ("text", "text_c10"):
        p = src / d / stem
        if p.is_file():
            lines = [s.strip() for s in p.read_text().splitlines() if s.strip()]
            if len(lines) < n:
                raise DataError(f"{p}: {len(lines)} captions, expected at least {n}")
            return lines[:n]
    raise DataError(f"{src / 'text' / stem}: caption file missing")


def prepare_cub(src: str | os.PathLike, out_dir: str | os.PathLike, *, size: int = 64,
                seq_len: int = 32, min_occ: int = 3, captions_per_image: int = 10,
                row_group_size: int = 1024,
                progress: Progress | None = None) -> dict[str, Path]:
    """Write ``train.parquet`` / ``test.parquet`` with modalities ``image``, ``text``.

    Parameters
    ----------
    src : CUB root (layout above).
    out_dir : output folder; written atomically (nothing on error).
    size : image side; seq_len : tokens per caption; min_occ : vocabulary threshold.
    captions_per_image : captions used per image (one sample each).
    """
    src = Path(src)
    images = _read_pairs(src / "images.txt")
    split_flag = _read_pairs(src / "train_test_split.txt")
    unknown = sorted(set(images) - set(split_flag), key=int)
    if unknown:
        raise DataError(f"{src / 'train_test_split.txt'}: no split for image id "
                        f"{unknown[0]} ({len(unknown)} ids)")
    classes = sorted({Path(rel).parts[0] for rel in images.values()})
    class_of = {c: i for i, c in enumerate(classes)}
    by_split = {"train": [], "test": []}
    for iid in sorted(images, key=int):
        flag = split_flag[iid]
        if flag not in ("0", "1"):
            raise DataError(f"{src / 'train_test_split.txt'}: image id {iid}: flag "
                            f"{flag!r} is not 0 or 1")
        by_split["train" if flag == "1" else "test"].append(iid)
    caps = {iid: _captions(src, images[iid], captions_per_image) for iid in images}
    vocab = build_vocab([c for iid in by_split["train"] for c in caps[iid]], min_occ)
    w2i = {w: i for i, w in enumerate(vocab)}
    k = captions_per_image

    def chunk(part: Sequence[str]) -> SiteChunk:
        """Images ``part`` with ``k`` captions each: ``len(part) * k`` rows."""
        img = np.stack([load_image(src / "images" / images[iid], "RGB", size)
                        for iid in part])  # [n, 3, size, size]
        text = [encode(c, w2i, seq_len) for iid in part for c in caps[iid]]
        label = [class_of[Path(images[iid]).parts[0]] for iid in part]
        return SiteChunk([f"{iid}-{j}" for iid in part for j in range(k)],
                         {"image": np.repeat(img, k, axis=0), "text": np.stack(text)},
                         {"label": np.repeat(np.array(label, np.int64), k)},
                         {"image_id": np.repeat(np.array(part, np.int64), k)})

    step = step_fn(progress, len(images) * k)
    done, paths = 0, {}
    with staged_output(out_dir) as stage:
        for split, ids in by_split.items():
            if not ids:
                continue
            meta = {"name": "cub-image-captions", "source": str(src.resolve()),
                    "split": split, "n": len(ids) * k, "classes": classes,
                    "vocab": vocab, "seq_len": seq_len, "min_occ": min_occ,
                    "recipe": {"image": f"resize to {size}x{size} (bicubic)",
                               "text": "lower-case word/punctuation tokens, cut to "
                                       f"{seq_len - 1}, <eos>, <pad>; ids into vocab",
                               "vocab": f"<exc>, <pad>, <eos>, then train words seen "
                                        f"> {min_occ} times, first-appearance order"},
                    "created_by": "mmvm.data.prepare.cub"}
            chunks = map(chunk, batched(ids, row_group_size // k))
            paths[split] = write_site_table_batches(
                stage / f"{split}.parquet",
                reported(chunks, step, f"reading {split}", done), meta,
                row_group_size=row_group_size)
            done += len(ids) * k
    return final_paths(paths, stage, out_dir)
