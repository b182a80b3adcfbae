"""DICOM images (pydicom) -> 8-bit Pillow images, as a reading room's viewer shows them.

A hospital's X-rays leave the PACS as DICOM, not PNG: 10 to 16 bits stored in 16, a
rescale (the Modality LUT), a window the modality chose (the VOI LUT: Window Center /
Width, or a lookup table) and, for MONOCHROME1, white meaning 0. The header says all
of it, so nothing is guessed (``--white-level auto`` guesses a PNG's bit depth from
its brightest pixel):

1. the stored values go through the Modality LUT (``apply_modality_lut``);
2. ``window = "file"``: through the header's first VOI LUT or window when it has one
   (the window as PS3.3 C.11.2.1.2 writes it out, 0 to 1); ``"none"``: not;
3. the result is scaled to 0..255 over its range as the header gives it: the window's
   output range, else the stored bits' range (``BitsStored``, ``PixelRepresentation``)
   through the rescale, whose top a ``white`` level, where given, replaces (0 stays
   0; a windowed image keeps its window's: the window says where white is);
4. MONOCHROME1 is inverted, so bone is white in every image; the Pixel Padding Value
   (a collimator's border, no part of the image) is black.

Only the pixels are read: no header value (names, dates, UIDs) reaches the site files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmvm.data.store import DataError

SUFFIXES = (".dcm", ".dicom")
PICTURES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # Pillow's, never DICOM
DIRECTORY_UID = "1.2.840.10008.1.3.10"  # a DICOMDIR: an export's index of its files
WINDOWS = ("file", "none")  # the header's VOI window, or the stored range
_MAGIC_AT, _MAGIC = 128, b"DICM"  # a DICOM file's preamble, then these four bytes
PLUGINS = ("pip install pylibjpeg pylibjpeg-libjpeg (JPEG Lossless, JPEG-LS) or "
           "python-gdcm")  # baseline JPEG and JPEG 2000: Pillow's


def is_dicom(path: str | os.PathLike) -> bool:
    """A ``.dcm``/``.dicom`` file, or one of no picture suffix that starts as DICOM
    does (PACS exports name files ``IM000123`` or by UID, ``1.2.840...604688``)."""
    path = Path(path)
    if path.suffix.lower() in SUFFIXES:
        return True
    if path.suffix.lower() in PICTURES:
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(_MAGIC_AT)
            return fh.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def read_dicom(path: str | os.PathLike, white: float | str | None = None,
               window: str = "file"):
    """``(image, how)``: the pixels of the DICOM file ``path`` as an 8-bit Pillow
    image (grey ``L``, or ``RGB`` for colour), read as the module says, and how it was
    read (``"DICOM MONOCHROME1 12-bit windowed"``), for the preparer's notes.
    :class:`DataError` names the file for anything that is not one 2-D image; an
    export's file is untrusted input, so any failure reading it is the file's (a
    file cut inside its header raised ``struct.error``)."""
    if window not in WINDOWS:
        raise ValueError(f"window {window!r}: one of {', '.join(WINDOWS)}")
    try:
        return _read(path, white, window)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 (see the docstring)
        why = " ".join(str(e).split())[:200]
        raise DataError(f"{path}: cannot read it as DICOM ({type(e).__name__}: "
                        f"{why})") from None


def _read(path: str | os.PathLike, white: float | str | None, window: str):
    import warnings

    with warnings.catch_warnings():  # pydicom warns of every odd value; the file is
        warnings.simplefilter("ignore")  # read as it is, or refused by name
        return _decoded(path, white, window)


def _decoded(path: str | os.PathLike, white: float | str | None, window: str):
    import pydicom
    from PIL import Image
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError) as e:
        why = str(e).split(". Use force=True")[0]  # pydicom's advice is not ours
        raise DataError(f"{path}: not a readable DICOM file ({why})") from None
    if str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")) \
            == DIRECTORY_UID:
        raise DataError(f"{path}: a DICOMDIR, the export's index of its files, not an "
                        f"image; leave it out of the image folder")
    if "PixelData" not in ds:
        raise DataError(f"{path}: a DICOM file without an image (SOP class "
                        f"{ds.get('SOPClassUID', '?')!s}: a report or a presentation "
                        f"state?); leave it out of the image folder")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"{path}: {frames} frames (a cine or tomosynthesis series); one "
                        f"image per file: export the frame to use")
    arr = _pixels(ds, path)
    kind = str(ds.get("PhotometricInterpretation", "")).upper()
    if arr.ndim == 3:  # colour: pydicom gives RGB (YBR converted)
        if arr.dtype != np.uint8:
            raise DataError(f"{path}: colour DICOM of {ds.BitsStored} bits; 8-bit colour "
                            f"only")
        return Image.fromarray(arr, "RGB"), f"DICOM {kind}"
    if kind not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(f"{path}: photometric interpretation {kind or '(none)'}: grey "
                        f"(MONOCHROME1/2) or colour images only")
    values, (lo, hi), windowed = grey_values(arr, ds, window)
    given = white is not None and white != "auto"
    if given and not windowed:  # a window sets its own white: the level is not used
        lo, hi = 0.0, float(white)
    if not hi > lo:
        raise DataError(f"{path}: the header's value range {lo:g}..{hi:g} is empty")
    out = np.clip((values - lo) / (hi - lo), 0.0, 1.0) * 255.0
    if kind == "MONOCHROME1":  # 0 is white
        out = 255.0 - out
    out[padding(arr, ds)] = 0.0  # no part of the image (a collimator's border): black
    how = f"DICOM {kind} {ds.BitsStored}-bit" + (" white-level" * (given and not windowed)) \
        + (" windowed" if windowed else "")
    return Image.fromarray(np.round(out).astype(np.uint8), "L"), how


def grey_values(arr: np.ndarray, ds, window: str = "file"
                ) -> tuple[np.ndarray, tuple[float, float], bool]:
    """``(values, (lo, hi), windowed)``: a grey image's stored values through the
    Modality LUT and, for ``window = "file"`` where the header has one, its first VOI
    LUT or window, with the range they span: the stored bits' through the rescale,
    a VOI LUT's entries' (:func:`lut_top`), a window's 0..1 (:func:`windowed`)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    bits = int(ds.BitsStored)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    if ds.get("ModalityLUTSequence"):  # a lookup table: its output bits
        lo, hi = 0, 2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    else:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    values = apply_modality_lut(arr, ds).astype(np.float64)
    if window == "none":
        return values, (float(lo), float(hi)), False
    if ds.get("VOILUTSequence"):  # a table indexed by the (integer) values
        out = apply_voi_lut(np.rint(values).astype(np.int64), ds, prefer_lut=True)
        return out.astype(np.float64), (0.0, lut_top(ds.VOILUTSequence[0])), True
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return windowed(values, ds), (0.0, 1.0), True
    return values, (float(lo), float(hi)), False


def windowed(values: np.ndarray, ds) -> np.ndarray:
    """The header's first window (Window Center / Width, VOI LUT Function) applied to
    ``values`` as 0 (its bottom) to 1 (its top), PS3.3 C.11.2.1.2-3. Written out, not
    pydicom's: that maps onto the rescaled stored range, which a negative slope turns
    upside down."""
    def first(key):
        value = ds[key].value
        return float(value[0] if ds[key].VM > 1 else value)

    c, w = first("WindowCenter"), first("WindowWidth")
    kind = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if kind == "SIGMOID" and w > 0:
        return 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if kind == "LINEAR_EXACT" and w > 0:
        return np.clip((values - c) / w + 0.5, 0.0, 1.0)
    if kind == "LINEAR" and w >= 1:
        out = (values - (c - 0.5)) / max(w - 1.0, 1e-12) + 0.5
        out[values <= c - 0.5 - (w - 1) / 2] = 0.0
        out[values > c - 0.5 + (w - 1) / 2] = 1.0
        return np.clip(out, 0.0, 1.0)
    raise ValueError(f"window width {w:g} with VOI LUT function {kind} (LINEAR needs "
                     f">= 1, LINEAR_EXACT and SIGMOID > 0)")


def lut_top(item) -> float:
    """A VOI LUT's white: its descriptor's bits, unless its entries need fewer (some
    CR devices declare 16 bits and store 12; the declared top left them at 16 of 255
    grey levels): then the smallest power of two that holds them, as viewers read it."""
    declared = int(item.LUTDescriptor[2])
    data = item.LUTData
    entries = np.frombuffer(data, np.uint16 if declared > 8 else np.uint8) \
        if isinstance(data, bytes) else np.asarray(data)
    peak = int(entries.max(initial=0))
    needed = max(1, peak.bit_length())
    return float(2 ** min(declared, needed) - 1)


def padding(arr: np.ndarray, ds) -> np.ndarray:
    """Where ``arr`` holds the header's Pixel Padding Value (up to its Range Limit):
    pixels that are no part of the image (PS3.3 C.7.5.1.1.2)."""
    if "PixelPaddingValue" not in ds:
        return np.zeros(arr.shape, bool)
    a = int(ds.PixelPaddingValue)
    b = int(ds.get("PixelPaddingRangeLimit", a))
    return (arr >= min(a, b)) & (arr <= max(a, b))


def _pixels(ds, path) -> np.ndarray:
    """The decoded pixel array; a compressed file whose decoder is not installed says
    which plugin reads it (JPEG 2000 is read by Pillow)."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(syntax, "name", None) or "an unknown transfer syntax"
    try:
        return ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:
        if "missing dependencies" in str(e):
            raise DataError(f"{path}: pixel data compressed as {name}, whose decoder is "
                            f"not installed: {PLUGINS}; or export uncompressed") from None
        raise DataError(f"{path}: cannot decode its pixel data ({name}: "
                        f"{' '.join(str(e).split())})") from None
    except (ValueError, AttributeError, KeyError) as e:
        raise DataError(f"{path}: cannot decode its pixel data ({name}: {e})") from None
