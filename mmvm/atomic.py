"""The one atomic file writer: a reader sees the old file or the new one, never a part.

Every file the project writes (checkpoints, site Parquet files, keys, results, plots)
goes through :func:`atomic_write`:

1. a temporary file ``.<name>.<random>.tmp`` in the target's directory (same file
   system, so the final move is atomic), with permission ``mode`` before any byte is
   written, so a private key is never readable by others, not even half-written;
2. the bytes, or whatever the ``writer`` callable writes into the open file;
3. flush and ``fsync`` of the file;
4. ``os.replace`` onto the target, or, when ``overwrite=False``, ``os.link`` (which
   refuses an existing target with ``FileExistsError``) and removal of the temp name;
5. ``fsync`` of the directory, so the rename itself survives a crash.

On any error, ``KeyboardInterrupt`` included, the temp file is removed and the target
is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

Writer = Callable[[BinaryIO], None]


def atomic_write(
    path: str | os.PathLike,
    data: bytes | Writer,
    *,
    mode: int = 0o600,
    overwrite: bool = True,
) -> None:
    """Write ``data`` to ``path`` atomically with permission ``mode``.

    Parameters
    ----------
    path : the target file; its directory is created if needed.
    data : the content, or a callable ``writer(fh)`` that writes it into the open
        binary file ``fh`` (e.g. ``lambda fh: torch.save(state, fh)``); the writer
        must not close ``fh``.
    mode : permission bits of the written file (not subject to the umask).
    overwrite : replace an existing ``path``; when false an existing ``path`` raises
        ``FileExistsError`` and is left untouched.

    Raises
    ------
    FileExistsError
        ``overwrite`` is false and ``path`` exists.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory``; a file system that cannot is skipped."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def existing_part(path: str | Path) -> Path:
    """The deepest part of ``path`` that exists (``path`` itself when it does): where a
    write would first touch the disk, so a file there means "not a folder"."""
    existing = Path(path)
    while not (existing.exists() or existing.is_symlink()) and existing != existing.parent:
        existing = existing.parent
    return existing
