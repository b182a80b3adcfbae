"""One process at a time: an exclusive ``flock`` held while a process writes.

Released when the descriptor closes, however the process ends (a SIGKILL too), so a
crashed holder never leaves a stale lock behind. Where there is no ``flock``
(Windows), nothing is locked.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class LockBusy(Exception):
    """Another process held the lock for the whole wait."""


class LockUnsupported(OSError):
    """The file system refused ``flock`` (some network file systems do)."""


def acquire(path: str | Path, wait: float, create: bool = True) -> int | None:
    """An open descriptor of ``path`` holding an exclusive lock (close it to release),
    ``None`` without ``flock``. ``create``: a file made 0600 if absent; otherwise
    ``path`` must exist (a folder may be locked through its own descriptor)."""
    if fcntl is None:
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600) if create else \
        os.open(path, os.O_RDONLY)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LockBusy(str(path)) from None
            time.sleep(0.01)
        except OSError as err:
            os.close(fd)
            raise LockUnsupported(err.errno, err.strerror) from None


@contextmanager
def folder_lock(folder: Path, what: str, wait: float = 0.0) -> Iterator[None]:
    """Hold ``folder`` (made if absent) for the block; ``ValueError`` naming ``what``
    if another process holds it for ``wait`` seconds. A folder it made that is still
    empty after the block (a run that failed before writing anything) is removed; a
    process that waited on it meanwhile locks the folder made anew."""
    while True:
        made = not folder.is_dir()
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = acquire(folder, wait, create=False)
        except LockBusy:
            waited = f" (waited {wait:g} s)" if wait else ""
            raise ValueError(f"{folder}: another process ({what}) is writing this folder "
                             f"now{waited}; wait for it to end or choose another folder"
                             ) from None
        except LockUnsupported:
            fd = None  # a file system without flock: as on Windows, nothing is locked
        if fd is None or _still(fd, folder):
            break
        os.close(fd)  # removed by its maker while this one waited
    try:
        yield
    finally:
        if made:
            try:
                folder.rmdir()  # only if empty: anything written stays
            except OSError:
                pass
        if fd is not None:
            os.close(fd)


def _still(fd: int, folder: Path) -> bool:
    """Whether the locked descriptor ``fd`` is still the folder at ``folder``."""
    try:
        now, held = os.stat(folder), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
