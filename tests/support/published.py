"""Tiny trees in the published layouts of CelebA, CUB and MIMIC-CXR-JPG.

Written for the preparers' tests (tests/data/test_prepare_*.py) and the end-to-end
training tests (tests/data/test_train_*.py): each writer makes the files the real
download has, with a handful of synthetic images, and returns what a test compares
the prepared data with. :func:`record_chunks` shows that a preparer streams.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


# ------------------------------------------------------------------ streaming
def record_chunks(monkeypatch, module) -> tuple[list[str], list[tuple[int, int]]]:
    """Wrap the ``load_image`` and ``write_site_table_batches`` a preparer ``module``
    uses. Returns ``(decoded, chunks)``: every image path decoded, in order, and per
    chunk handed to the writer ``(rows, images decoded since the previous chunk of
    that file)``; a preparer that streams decodes a chunk's images only when asked."""
    decoded: list[str] = []
    chunks: list[tuple[int, int]] = []
    load, write = module.load_image, module.write_site_table_batches

    def counting_load(path, *args, **kwargs):
        decoded.append(str(path))
        return load(path, *args, **kwargs)

    def watching_write(path, batches, *args, **kwargs):
        def watch():
            before = len(decoded)
            for chunk in batches:
                chunks.append((len(chunk.sample_ids), len(decoded) - before))
                before = len(decoded)
                yield chunk
        return write(path, watch(), *args, **kwargs)

    monkeypatch.setattr(module, "load_image", counting_load)
    monkeypatch.setattr(module, "write_site_table_batches", watching_write)
    return decoded, chunks

# ------------------------------------------------------------------ CelebA
CELEBA_NAMES = [f"Attr_{k}" for k in range(40)]
CELEBA_NAMES[0], CELEBA_NAMES[20] = "5_o_Clock_Shadow", "Male"


def celeba_tree(root, n=7, n_train=4, n_val=1) -> dict[str, np.ndarray]:
    """``n`` aligned faces (218 x 178, a red square at the centre), random
    attributes; files 1..n_train train, the next n_val val, the rest test.
    Returns file -> attributes in {-1, 1}."""
    rng = np.random.default_rng(0)
    (root / "img_align_celeba").mkdir(parents=True)
    attrs, part = {}, {}
    for i in range(1, n + 1):
        f = f"{i:06d}.jpg"
        a = np.full((218, 178, 3), 40, np.uint8)
        a[109 - 10:109 + 10, 89 - 10:89 + 10] = (200, 30, 30)  # red square at centre
        Image.fromarray(a).save(root / "img_align_celeba" / f, quality=95)
        attrs[f] = rng.choice([-1, 1], size=40)
        part[f] = 0 if i <= n_train else (1 if i <= n_train + n_val else 2)
    lines = [str(n), " ".join(CELEBA_NAMES)]
    lines += [f"{f}  " + " ".join(f"{v:2d}" for v in v_) for f, v_ in attrs.items()]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{f} {p}\n" for f, p in part.items()))
    return attrs


# ------------------------------------------------------------------ CUB
CUB_CAPTION = "this bird has a red crown, and black wings."


def cub_tree(root, caps=10) -> None:
    """Two classes of three images (50 x 40) with ``caps`` captions each; per class
    images 1 and 2 are train, image 3 test."""
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    images = []
    for c in classes:
        (root / "images" / c).mkdir(parents=True)
        (root / "text" / c).mkdir(parents=True)
        for j in range(3):
            name = f"{c.split('.')[1]}_{j}"
            Image.new("RGB", (50, 40), (10 * j, 100, 200)).save(
                root / "images" / c / f"{name}.jpg")
            lines = [CUB_CAPTION if k % 2 == 0 else f"a small {c[-9:].lower()} bird "
                     f"with long wings number {k}" for k in range(caps)]
            (root / "text" / c / f"{name}.txt").write_text("\n".join(lines) + "\n")
            images.append(f"{c}/{name}.jpg")
    (root / "images.txt").write_text(
        "".join(f"{i + 1} {p}\n" for i, p in enumerate(images)))
    (root / "train_test_split.txt").write_text(
        "".join(f"{i + 1} {int(i % 3 != 2)}\n" for i in range(len(images))))


# MIMIC-CXR: the look-alike tree is the product's (mmvm data make mimic_cxr)
from mmvm.data.mimic_lookalike import mimic_studies, mimic_tree  # noqa: E402,F401
