"""PNG files found in run folders, checked before they are embedded in a report.

A run folder may come from another site, so a picture is embedded only when it is
what it claims to be: a PNG that Pillow decodes, of bounded size in bytes and pixels.
Anything else is left out with the reason, which the report states.
"""

from __future__ import annotations

import io
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_BYTES = 8 * 2**20
MAX_PIXELS = 40_000_000


def read_png(path: Path) -> tuple[bytes | None, str]:
    """``(bytes, "")`` for an acceptable PNG, ``(None, why)`` otherwise."""
    from PIL import Image

    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            return None, f"{path.name} is {size / 2**20:.1f} MiB (over {MAX_BYTES >> 20} MiB)"
        data = path.read_bytes()
    except OSError as err:
        return None, f"{path.name} cannot be read ({err.strerror or err})"
    if not data.startswith(PNG_MAGIC):
        return None, f"{path.name} is not a PNG file"
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                return None, f"{path.name} is {image.width}x{image.height} pixels (too large)"
            image.verify()
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds on bad files
        return None, f"{path.name} is not a readable PNG ({type(err).__name__})"
    return data, ""
