"""One process at a time answers for a site from its state folder.

The protocol's guarantees at a site (each window trained and masked once, each
unmask step answered once, envelopes opened once) are checks of its state on disk
followed by writes of it. They hold while one process at a time reads and writes
that state, which Flower's SuperNode happens to do (one message at a time). Two
SuperNodes given the same ``state`` folder, or a wedged ClientApp process still
running while the next message arrives, would both pass the checks; a server could
then, for example, get two unmask answers from different survivor views. So the
state is locked for the whole answer (``flock``, released when the process exits,
however it exits).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mmvm.federation.coordinator import FederationError
from mmvm.folder_lock import LockBusy, LockUnsupported, acquire


class StateBusyError(FederationError):
    """Another process holds the site's state."""


@contextmanager
def state_lock(path: str | Path, wait: float = 60.0) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (made 0600 if absent) for the block;
    :class:`StateBusyError` if another process holds it for ``wait`` seconds."""
    try:
        fd = acquire(path, wait)
    except LockBusy:  # the name only: the text may travel
        raise StateBusyError(
            f"{Path(path).parent.name}/{Path(path).name}: another process has been "
            f"answering for this site from the same state folder for {wait:g} s (two "
            f"SuperNodes with one state=?); refused") from None
    except LockUnsupported as err:
        raise FederationError(
            f"{Path(path).name}: the site's state folder cannot be locked "
            f"({err.strerror}; a file system without flock?): give the node config a "
            f"state= folder on a local disk") from None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
