"""The one atomic file writer: a reader sees the old file or the new one, never a part.

Every file the project writes (checkpoints, site Parquet files, keys, results, plots)
goes through :func:`atomic_write`, or into a staging folder that then moves in whole
(:func:`mmvm.data.prepare.staged_output`, the data preparers'), or is a hard link
renamed into place (a site's snapshots, :mod:`mmvm.federation.site_store`):

1. a temporary file ``.<name>.<random>.tmp`` in the target's directory (same file
   system, so the final move is atomic), with permission ``mode`` before any byte is
   written, so a private key is never readable by others, not even half-written;
2. the bytes, or whatever the ``writer`` callable writes into the open file;
3. flush and ``fsync`` of the file;
4. ``os.replace`` onto the target, or, when ``overwrite=False``, ``os.link`` (which
   refuses an existing target with ``FileExistsError``) and removal of the temp name;
5. ``fsync`` of the directory, so the rename itself survives a crash.

On any error, ``KeyboardInterrupt`` included, the temp file is removed and the target
is left as it was; an ``OSError`` while writing (a full disk, a quota, a lost mount)
becomes a :class:`WriteError` whose message names the target and says so.
:func:`sweep_temps` removes the temp files a killed process (SIGKILL, power loss) left.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

Writer = Callable[[BinaryIO], None]
# tempfile.mkstemp's names: its 8 random characters between our prefix and suffix
_TEMP = r"\.{name}\.[a-z0-9_]{{8}}\.tmp"


class WriteError(OSError):
    """An atomic write that failed after its temp file was made: ``errno`` is the
    cause's, the message names the target and that it was left as it was."""

    def __str__(self) -> str:
        return self.strerror


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
    WriteError
        the bytes could not be written or moved into place (e.g. the disk is full);
        ``path`` is as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:  # no inode left, no permission: named by the target's name
        raise _write_error(path, err, existed) from err
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
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        # the write's own failure (a writer reading another file keeps its error)
        if isinstance(err, OSError) and not isinstance(err, (FileExistsError, WriteError)) \
                and err.filename in (None, tmp):
            raise _write_error(path, err, existed) from err
        raise
    _fsync_dir(path.parent)


def _write_error(path: Path, err: OSError, existed: bool) -> WriteError:
    """``could not write <path>: No space left on device (...); the previous <name>
    is intact``: what failed, where, and that nothing was lost."""
    why = err.strerror or str(err) or type(err).__name__
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why += f" (is the file system of {path.parent} full, or a quota or file size limit hit?)"
    kept = (f"the previous {path.name} is intact" if existed
            else f"no {path.name} was written, nor any part of it")
    return WriteError(err.errno, f"could not write {path}: {why}; {kept}")


def sweep_temps(directory: str | os.PathLike, names: tuple[str, ...]) -> list[Path]:
    """Remove the temp files :func:`atomic_write` left in ``directory`` for the files
    ``names`` when its process was killed before it could clean up (SIGKILL, a power
    cut); only names of that exact pattern (``.<name>.<8 random>.tmp``). Returns them."""
    pattern = re.compile("|".join(_TEMP.format(name=re.escape(n)) for n in names))
    try:
        entries = list(Path(directory).iterdir())
    except OSError:  # not there yet, or unreadable: nothing of ours to remove
        return []
    removed = []
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


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
