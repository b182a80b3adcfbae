"""Damage a torch file as a disk or a copy would: bytes inside one tensor changed,
the zip's structure intact (so torch.load reads it without a word)."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path


def flip_tensor_bytes(path: Path, count: int = 16) -> str:
    """Invert ``count`` bytes in the middle of the file's largest entry (a tensor's
    storage); the entry's name."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", fh.read(4))
        start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        fh.seek(start)
        old = fh.read(count)
        fh.seek(start)
        fh.write(bytes(b ^ 0xFF for b in old))
    return info.filename
