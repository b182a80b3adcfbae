"""Image decoding shared by the preparers: file -> uint8 ``[C, H, W]`` (Pillow)."""

from __future__ import annotations

import os

import numpy as np

from mmvm.data.store import DataError


def load_image(path: str | os.PathLike, mode: str, size: int | None = None,
               center_crop: int | None = None) -> np.ndarray:
    """Decode ``path`` to uint8 ``[C, H, W]`` (``mode`` "L" -> C = 1, "RGB" -> 3).

    ``center_crop``: first cut the central ``c x c`` square; ``size``: then resize to
    ``size x size`` (bicubic with antialiasing, aspect ratio not kept). JPEGs are
    decoded in draft mode at the smallest scale still >= the target, which is exact
    up to the decoder's own downsampling and much faster on large X-rays. Any
    decoding problem raises :class:`DataError` naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if size is not None and center_crop is None and img.format == "JPEG":
                img.draft(mode, (size, size))
            img = img.convert(mode)
            if center_crop is not None:
                w, h = img.size
                if center_crop > min(w, h):
                    raise DataError(f"{path}: image {w}x{h} is smaller than the "
                                    f"{center_crop}x{center_crop} centre crop")
                left, top = (w - center_crop) // 2, (h - center_crop) // 2
                img = img.crop((left, top, left + center_crop, top + center_crop))
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            arr = np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)
