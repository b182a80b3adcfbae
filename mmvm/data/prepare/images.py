"""Image decoding shared by the preparers: file -> uint8 ``[C, H, W]`` (Pillow;
DICOM through :mod:`mmvm.data.prepare.dicom`)."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from mmvm.data.store import DataError

# grey modes of more than 8 bits a pixel (Pillow): the white level of the file type
WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535,
              "I": 65535, "F": None}
LOW_BITS = 4096  # a 16-bit file whose brightest pixel is below this is 12-bit data
AUTO_BITS = (10, 12, 14, 16)  # bit depths --white-level auto tells apart


FITS = ("stretch", "pad", "crop")  # how a non-square image becomes a square


def load_image(path: str | os.PathLike, mode: str, size: int | None = None,
               center_crop: int | None = None, white: float | str | None = None,
               seen: Counter | None = None, fit: str = "stretch",
               whites: Counter | None = None, window: str = "file") -> np.ndarray:
    """Decode ``path`` to uint8 ``[C, H, W]`` (``mode`` "L" -> C = 1, "RGB" -> 3).

    ``center_crop``: first cut the central ``c x c`` square; ``size``: then resize to
    ``size x size`` (bicubic with antialiasing). A non-square image is, by ``fit``:
    ``stretch``ed (aspect ratio not kept), ``pad``ded (resized whole, its longer side
    to ``size``, centred on black) or ``crop``ped (its central square). JPEGs are
    decoded in draft mode at the smallest scale still >= the target, which is exact
    up to the decoder's own downsampling and much faster on large X-rays. Grey images
    of more than 8 bits (16-bit PNG, TIFF) are scaled, ``value / white * 255``
    (:func:`to_8bit`); DICOM files are read as their header says, ``window``: its VOI
    window or not (:mod:`~mmvm.data.prepare.dicom`). Any decoding problem raises
    :class:`DataError` naming the file. ``seen``: counts each file's own ``(mode,
    (width, height))``, for the preparer to say what was converted or resized;
    ``whites``: the white level each file of more than 8 bits was read at.
    """
    from PIL import Image, UnidentifiedImageError

    from mmvm.data.prepare.dicom import is_dicom, read_dicom

    try:
        if is_dicom(path):
            img, how = read_dicom(path, white, window)
            return _finished(img, img.size, how, mode, size, center_crop, fit, path,
                             seen)
        with Image.open(path) as img:
            wh, was = img.size, img.mode  # the file's own (draft changes both)
            if size is not None and center_crop is None and img.format == "JPEG":
                img.draft("RGB" if was == "RGB" else mode, (size, size))
            was = _grey_or(img, was, mode) if seen is not None else was
            if img.mode in WIDE_MODES:
                img = to_8bit(img, path, white, whites)
            return _finished(img, wh, was, mode, size, center_crop, fit, path, seen)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except DataError:  # it decoded, and is refused (a white level, a crop): as it says
        raise
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None


def _finished(img, wh: tuple[int, int], was: str, mode: str, size: int | None,
              center_crop: int | None, fit: str, path, seen: Counter | None
              ) -> np.ndarray:
    """An 8-bit Pillow image as uint8 ``[C, H, W]`` in ``mode``: cropped, then made a
    ``size`` square (:func:`load_image`); ``seen`` counts ``(was, wh)``."""
    if seen is not None:
        seen[(was, wh)] += 1
    img = img.convert(mode)
    if center_crop is not None:
        w, h = img.size
        if center_crop > min(w, h):
            raise DataError(f"{path}: image {w}x{h} is smaller than the "
                            f"{center_crop}x{center_crop} centre crop")
        left, top = (w - center_crop) // 2, (h - center_crop) // 2
        img = img.crop((left, top, left + center_crop, top + center_crop))
    if size is not None and img.size != (size, size):
        img = fitted(img, size, fit)
    arr = np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy)
    return np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))


def fitted(img, size: int, fit: str):
    """``img`` (Pillow) as a ``size x size`` square, as ``fit`` says (see
    :func:`load_image`): a chest X-ray stretched changes the heart's width against the
    chest's, which is how cardiomegaly is read."""
    from PIL import Image

    w, h = img.size
    if fit == "crop" and w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    elif fit == "pad" and w != h:
        scale = size / max(w, h)
        inner = img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                           Image.Resampling.BICUBIC)
        square = Image.new(img.mode, (size, size))  # black
        square.paste(inner, ((size - inner.size[0]) // 2, (size - inner.size[1]) // 2))
        return square
    elif fit not in FITS:
        raise ValueError(f"fit {fit!r}: one of {', '.join(FITS)}")
    return img.resize((size, size), Image.Resampling.BICUBIC)


def _grey_or(img, was: str, mode: str) -> str:
    """The file's mode, ``"grey RGB"`` for an RGB file whose three channels are equal
    (to 2 levels: an X-ray exported as RGB, made grey, nothing lost). Read only when
    the target is grey, where colour would be lost."""
    if mode != "L" or was != "RGB" or img.mode != "RGB":
        return was
    a = np.asarray(img, dtype=np.int16)  # a JPEG's grey channels differ by a level or two
    return "grey RGB" if int((a.max(2) - a.min(2)).max(initial=0)) <= 2 else was


def to_8bit(img, path: str | os.PathLike, white: float | str | None = None,
            whites: Counter | None = None):
    """A grey image of more than 8 bits a pixel as 8-bit "L": ``value / white * 255``,
    ``white`` by default the file type's largest value (65535 for 16 bits, as
    torchxrayvision reads 16-bit X-rays). Pillow's own ``convert("L")`` clips every
    value above 255 to white, which turned a 16-bit X-ray into a white silhouette.
    A 16-bit file whose brightest pixel is below 4096 holds 12-bit data (or less),
    which that scale would leave black: it is refused unless ``white`` says where
    white is. ``white = "auto"``: an integer image's own, 2^b - 1 for the fewest bits
    b of 10, 12, 14, 16 that hold its brightest pixel (a folder of 12- and 16-bit
    exports; a 16-bit image darker than 4096 is then read as 12-bit, brighter by 16:
    ``whites`` counts the levels, which the preparer says)."""
    from PIL import Image

    arr = np.asarray(img, dtype=np.float64)
    if white == "auto":
        if WIDE_MODES[img.mode] is None:
            raise DataError(f"{path}: a floating-point image ({img.mode}): --white-level "
                            f"auto reads integer exports only; give the value that is "
                            f"white")
        peak = float(arr.max()) if arr.size else 0.0
        white = next((2.0 ** b - 1 for b in AUTO_BITS if peak <= 2 ** b - 1), peak)
    top = white if white is not None else WIDE_MODES[img.mode]
    if whites is not None:
        whites[top] += 1
    if top is None:
        raise DataError(f"{path}: a floating-point image ({img.mode}) has no white level "
                        f"of its own: give the value that is white (--white-level)")
    peak = float(arr.max()) if arr.size else 0.0
    if white is None and peak < LOW_BITS:
        raise DataError(f"{path}: refused: a {img.mode} image whose brightest pixel is "
                        f"{peak:g}, below {LOW_BITS} of {top}: 12-bit data in a 16-bit "
                        f"file? Give the value that is white (--white-level 4095 for 12 "
                        f"bits, 255 for 8-bit data in a 16-bit file)")
    if not np.isfinite(peak) or peak > top or arr.min() < 0:
        raise DataError(f"{path}: pixel values {arr.min():g}..{peak:g} outside 0..{top:g} "
                        f"(the white level)")
    return Image.fromarray(np.round(arr / top * 255).astype(np.uint8), "L")


COLOUR = ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV")  # a palette (P) may be grey
FIT_SAID = {"stretch": "stretched (--fit pad or crop keeps their proportions)",
            "pad": "padded with black to a square, proportions kept (--fit pad)",
            "crop": "cut to their central square, proportions kept (--fit crop)"}


def conversion_notes(name: str, seen: Counter, mode: str, size: int,
                     fit: str = "stretch", whites: Counter | None = None) -> list[str]:
    """What decoding ``name``'s images changed beyond the documented resize to
    ``size``: images of several sizes (non-square ones made square by ``fit``), colour images
    made grey, transparency dropped, or 8-bit images beside wider ones (two exports
    whose grey levels may not match)."""
    total, notes = sum(seen.values()), []
    sizes = Counter(wh for (_, wh) in seen.elements())
    stretched = sum(n for (w, h), n in sizes.items() if w != h)
    if len(sizes) > 1 or stretched:
        shown = ", ".join(f"{w}x{h}: {n}" for (w, h), n in sizes.most_common(4))
        notes.append(f"{name}: images of {len(sizes)} size{'s' * (len(sizes) > 1)}, "
                     f"width x height ({shown}{' ...' * (len(sizes) > 4)}) resized to "
                     f"{size}x{size}"
                     + (f"; {stretched} non-square one{'s' * (stretched > 1)} "
                        + FIT_SAID[fit] if stretched else ""))
    modes = Counter(m for (m, _) in seen.elements())
    if mode == "L":  # DICOM colour: "DICOM RGB", "DICOM YBR_FULL_422"
        colour = {m: n for m, n in modes.items() if m in COLOUR
                  or m.startswith("DICOM") and "MONOCHROME" not in m}
        if colour:
            notes.append(f"{name}: {sum(colour.values())} of {total} images were colour "
                         f"({', '.join(f'{m}: {n}' for m, n in colour.items())}), made "
                         f"grey (--mode RGB keeps colour)")
    wide = {m: n for m, n in modes.items() if m in WIDE_MODES}
    if wide and sum(wide.values()) < total:
        notes.append(f"{name}: {sum(wide.values())} of {total} images had more than 8 "
                     f"bits a pixel ({', '.join(f'{m}: {n}' for m, n in wide.items())}), "
                     f"scaled to 8 bits by their white level; the other "
                     f"{total - sum(wide.values())} were 8-bit, kept as they are: two "
                     f"exports? Check that their grey levels look alike")
    if whites and len(whites) > 1:  # --white-level auto read them at several depths
        notes.append(f"{name}: images of more than 8 bits read at white levels "
                     + ", ".join(f"{w:g} ({n})" for w, n in sorted(whites.items()))
                     + ": a dark export read at a lower one is brightened; check them")
    notes += dicom_notes(name, modes, total)
    alpha = sum(n for m, n in modes.items() if m in ("RGBA", "LA", "PA"))
    if alpha:
        notes.append(f"{name}: {alpha} of {total} images had transparency, dropped")
    return notes


def dicom_notes(name: str, modes: Counter, total: int) -> list[str]:
    """How ``name``'s DICOM files were read (``modes``: :func:`~mmvm.data.prepare.
    dicom.read_dicom`'s ``how`` of each): their bit depths, windowed or not (a
    folder of both has two contrasts), inverted, scaled by ``--white-level``."""
    read = Counter({m: n for m, n in modes.items() if m.startswith("DICOM")})
    if not read:
        return []
    count = sum(read.values())
    inverted = sum(n for m, n in read.items() if "MONOCHROME1" in m)
    windowed = sum(n for m, n in read.items() if m.endswith("windowed"))
    levelled = sum(n for m, n in read.items() if "white-level" in m)
    bits = Counter()
    for m, n in read.items():
        bits[next((w for w in m.split() if w.endswith("-bit")), "colour")] += n
    said = (f"{name}: {count} of {total} images were DICOM, read by their headers ("
            + ", ".join(f"{b}: {n}" for b, n in sorted(bits.items()))
            + f"): {windowed} scaled by the header's VOI window, {count - windowed} over "
            f"the stored bits' range" + (f" ({levelled} up to --white-level)"
                                         if levelled else "")
            + f"; {inverted} MONOCHROME1 inverted (bone white)")
    if 0 < windowed < count:
        said += ("; windowed and unwindowed images differ in contrast (--dicom-window "
                 "none reads every one over its stored range)")
    if count < total:
        said += "; the others were not DICOM: check that their grey levels look alike"
    return [said]
